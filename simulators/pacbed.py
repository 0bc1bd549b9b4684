"""PACBED libraries on abTEM: one multislice per mistilt, the whole thickness series from it.

Training the thickness/mistilt networks needs patterns over thickness x mistilt x azimuth at
one energy and convergence angle. Simulating each pattern is far too slow on a CPU, so a
library holds one symmetry wedge of tilts (pacbed_symmetry.py) and, per tilt, every thickness
from the exit planes of a single run (physics-notes.md: no extra cost); training draws any
azimuth, scale, blur and dose from it (pacbed_augment.py).

Library layout (`<root>/<folder>/`), read back by pacbed_library.PacbedLibrary:

* `tilts/tilt_mx+2.00_my+1.00.npy`: float16 (n_thickness, n, n), each pattern divided by its
  own maximum; n is odd with k = 0 at the centre, axis 0 along kx, axis 1 along ky.
* `tilts/tilt_mx+2.00_my+1.00.json`: that tilt's thicknesses, peaks, detected fractions, time.
* `patterns.csv`: one row per pattern, the seed's columns `Path, Thickness, Mistilt,
  Conv_Angle` (Å, mrad, mrad) plus `Azimuth` (deg), `Energy` (keV), `Material`, `Direction`,
  `Sampling` (mrad/px), `Mistilt_X`, `Mistilt_Y` (mrad), `Peak` (the maximum the stored pattern
  was divided by, in incident intensity per pixel) and `Detected` (share of the incident beam
  inside the detector). `Path` is `<stack file>#<index>`: the pattern is
  `np.load(folder / stack)[index]` (see PATH_SEP).
* `library.json`: the spec, the system, conventions, timings; `complete` once every tilt is in.

`<root>/Register.csv` lists the libraries under a root by ID (the seed's Register.csv).
A run is resumable: each tilt's files are written to a temporary name and renamed, and a
re-run with the same spec skips the tilts already there.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .pacbed_io import (
    PATH_SEP,
    tilt_stem,
    update_register,
    write_meta,
    write_patterns_csv,
    write_tilt,
)
from .pacbed_symmetry import wedge_tilts
from .pacbed_systems import MaterialSystem, get_system, is_smooth_23

__all__ = [
    "PATH_SEP",
    "LibrarySpec",
    "Series",
    "default_folder",
    "resolve_spec",
    "simulate_library",
    "simulate_series",
]

log = logging.getLogger(__name__)


class LibrarySpec(BaseModel):
    """What a library is simulated from; None takes the system's default (resolve_spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: int = Field(ge=0, description="ID in pacbed_systems.SYSTEMS")
    energy_kev: float | None = Field(None, gt=0, le=1000)
    conv_angle_mrad: float | None = Field(None, gt=0, le=100)
    # The wedge grid of the system's symmetry, unless `tilts` lists the tilts (mrad) outright.
    tilt_max_mrad: float = Field(10.0, ge=0, le=100)
    tilt_step_mrad: float = Field(1.0, gt=0)
    tilts: tuple[tuple[float, float], ...] | None = None
    max_thickness_nm: float = Field(100.0, gt=0, le=2000)
    thickness_step_cells: int = Field(1, ge=1, description="exit plane every this many cells")
    # Detector extent in convergence angles: room for the crop around the disc and for
    # camera-length augmentation.
    max_angle_factor: float = Field(2.5, gt=1, le=10)
    frozen_phonons: int = Field(0, ge=0, le=64, description="0: none (no diffuse background)")
    seed: int = 0
    repeat: tuple[int, int] | None = None
    gpts: int | None = None
    scan_gpts: int | None = Field(None, ge=1)
    slices_per_cell: int | None = Field(None, ge=1)
    max_batch: int = Field(8, ge=1, description="probe positions per batch (memory)")

    @field_validator("gpts")
    @classmethod
    def _fast_grid(cls, value: int | None) -> int | None:
        if value is not None and not is_smooth_23(value):
            raise ValueError(f"gpts = {value} is not 2^a·3^b (e.g. 72, 288, 324)")
        return value


def resolve_spec(spec: LibrarySpec) -> LibrarySpec:
    """The spec with every default filled in from its system, so a library states all."""
    s = get_system(spec.system)
    fill = {
        "energy_kev": s.energy_kev,
        "conv_angle_mrad": s.conv_angle_mrad,
        "repeat": s.repeat,
        "gpts": s.gpts,
        "scan_gpts": s.scan_gpts,
        "slices_per_cell": s.slices_per_cell,
    }
    update = {k: v for k, v in fill.items() if getattr(spec, k) is None}
    if spec.tilts is None:
        update["tilts"] = tuple(wedge_tilts(spec.tilt_max_mrad, spec.tilt_step_mrad, s.symmetry))
    return spec.model_copy(update=update)


@dataclass(frozen=True)
class Series:
    """One tilt's thickness series: patterns (n_thickness, n, n) in incident intensity/px."""

    tilt: tuple[float, float]
    thickness_a: np.ndarray
    patterns: np.ndarray
    sampling_mrad: float
    seconds: float


def _potential(spec: LibrarySpec, system: MaterialSystem):
    """The crystal potential: one cell thick unit built once, repeated along the beam."""
    import abtem

    c = system.cell_lengths[2]
    n_cells = int(np.floor(spec.max_thickness_nm * 10 / c + 1e-9))
    if n_cells < 1:
        raise ValueError(f"max_thickness_nm = {spec.max_thickness_nm} is below one cell ({c} Å)")
    atoms = system.atoms() * (*spec.repeat, 1)
    kwargs = {"gpts": spec.gpts, "slice_thickness": c / spec.slices_per_cell}
    step = spec.thickness_step_cells * spec.slices_per_cell
    if spec.frozen_phonons:
        sigmas = {el: system.sigmas.get(el, 0.08) for el in set(atoms.get_chemical_symbols())}
        fp = abtem.FrozenPhonons(
            atoms, num_configs=spec.frozen_phonons, sigmas=sigmas, seed=spec.seed
        )
        unit = abtem.Potential(fp, **kwargs)
        return abtem.CrystalPotential(
            unit,
            repetitions=(1, 1, n_cells),
            exit_planes=step,
            num_frozen_phonons=spec.frozen_phonons,
            seeds=spec.seed,
        )
    unit = abtem.Potential(atoms, **kwargs).build(lazy=False)
    return abtem.CrystalPotential(unit, repetitions=(1, 1, n_cells), exit_planes=step)


def simulate_series(spec: LibrarySpec, tilt: tuple[float, float], potential=None) -> Series:
    """PACBED at every exit plane for one mistilt (mrad): the probe scans one unit cell.

    Thickness 0 (the entrance plane, the bare disc) is dropped. Runs on dask's synchronous
    scheduler: set OMP_NUM_THREADS etc. before Python starts to stay on one core.
    """
    import abtem
    import dask

    spec = resolve_spec(spec)
    system = get_system(spec.system)
    potential = potential if potential is not None else _potential(spec, system)
    ax, ay, _ = system.cell_lengths
    max_angle = spec.max_angle_factor * spec.conv_angle_mrad
    probe = abtem.Probe(
        energy=spec.energy_kev * 1e3,
        semiangle_cutoff=spec.conv_angle_mrad,
        tilt=(float(tilt[0]), float(tilt[1])),
    )
    probe.grid.match(potential)
    cutoff = min(probe.cutoff_angles)
    if max_angle > cutoff:
        raise ValueError(
            f"detector max angle {max_angle:.1f} mrad (max_angle_factor {spec.max_angle_factor} "
            f"x {spec.conv_angle_mrad} mrad) exceeds the grid's {cutoff:.1f} mrad: raise gpts"
        )
    scan = abtem.GridScan(start=(0, 0), end=(ax, ay), gpts=spec.scan_gpts, endpoint=False)
    start = time.perf_counter()
    with (
        abtem.config.set({"diagnostics.progress_bar": False}),
        dask.config.set(scheduler="synchronous"),
    ):
        measured = probe.scan(
            scan=scan,
            potential=potential,
            detectors=abtem.PixelatedDetector(max_angle=max_angle),
            max_batch=spec.max_batch,
        )
        names = [type(a).__name__ for a in measured.axes_metadata]
        averaged = tuple(i for i, n in enumerate(names) if n in ("ScanAxis", "FrozenPhononsAxis"))
        result = measured.mean(averaged).compute()
    seconds = time.perf_counter() - start
    thickness = np.asarray(result.axes_metadata[0].values, float)
    patterns = np.asarray(result.array, np.float32)
    kx, ky = result.angular_coordinates
    patterns = patterns[..., _odd_centred(kx), :][..., _odd_centred(ky)]
    sx, sy = result.angular_sampling
    if not np.isclose(sx, sy):
        raise ValueError(f"non-square detector pixels ({sx}, {sy}) mrad: use a square supercell")
    return Series(
        tilt=(float(tilt[0]), float(tilt[1])),
        thickness_a=thickness[1:],
        patterns=patterns[1:],
        sampling_mrad=float(sx),
        seconds=seconds,
    )


def _odd_centred(k: np.ndarray) -> slice:
    """The index range symmetric about k = 0 (an FFT grid has one more negative frequency)."""
    c = int(np.argmin(np.abs(k)))
    if abs(k[c]) > 1e-6 * abs(k[1] - k[0]):
        raise AssertionError("the detector grid has no k = 0 pixel")
    m = min(c, len(k) - 1 - c)
    return slice(c - m, c + m + 1)


def simulate_library(
    spec: LibrarySpec, root: Path, folder: str | None = None, progress: bool = True
) -> Path:
    """Simulate (or resume) a library under root; returns its folder.

    A folder that already holds a library of another spec is refused, not mixed into.
    """
    from tqdm import tqdm

    spec = resolve_spec(spec)
    system = get_system(spec.system)
    root = Path(root)
    folder = folder or default_folder(spec, system)
    lib = root / folder
    (lib / "tilts").mkdir(parents=True, exist_ok=True)
    meta_path = lib / "library.json"
    spec_json = spec.model_dump(mode="json")
    if meta_path.exists():
        old = json.loads(meta_path.read_text()).get("spec", {})
        keys = (set(old) | set(spec_json)) - {"max_batch"}  # max_batch only sets memory use
        diff = sorted(k for k in keys if old.get(k) != spec_json.get(k))
        if diff:
            raise ValueError(f"{lib} holds a library of another spec (differs in {diff})")
    update_register(root, folder, spec, system, status="running")
    done = {t for t in spec.tilts if (lib / "tilts" / f"{tilt_stem(t)}.npy").exists()}
    todo = [t for t in spec.tilts if t not in done]
    write_meta(lib, spec, system)
    potential = _potential(spec, system) if todo else None
    bar = tqdm(total=len(spec.tilts), initial=len(done), disable=not progress, desc=folder)
    for tilt in todo:
        series = simulate_series(spec, tilt, potential)
        write_tilt(lib, series)
        write_patterns_csv(lib, spec, system)
        write_meta(lib, spec, system)
        n = len(series.thickness_a)
        log.info(
            "%s tilt (%g, %g): %.1f s for %d thicknesses, %.3f s per pattern",
            folder,
            *tilt,
            series.seconds,
            n,
            series.seconds / n,
        )
        bar.update(1)
    bar.close()
    write_patterns_csv(lib, spec, system)
    meta = write_meta(lib, spec, system)
    update_register(
        root, folder, spec, system, status="complete" if meta["complete"] else "running"
    )
    return lib


def default_folder(spec: LibrarySpec, system: MaterialSystem) -> str:
    """E.g. "SrTiO3_001_300kV_20mrad" (plus "_fp8" with 8 frozen phonons)."""
    d = "".join(str(i) for i in system.direction)
    name = f"{system.name}_{d}_{spec.energy_kev:g}kV_{spec.conv_angle_mrad:g}mrad"
    return name + (f"_fp{spec.frozen_phonons}" if spec.frozen_phonons else "")
