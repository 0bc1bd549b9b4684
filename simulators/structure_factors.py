"""X-ray structure factors of crystals on the phase-retrieval grid, and data sets of them.

Crystals come from CIF files read by Dans_Diffraction (`load_cif`; the catalogue of ~90 of
them, with their prototype families, is `crystal_catalogue.builtin_structures`), each as
the expanded P1 cell: fractional positions, element, occupancy, Uiso.

Structure factors are Dans' own sum, batched in numpy: F(h) = sum_j f_j(|Q|) occ_j
exp(-Uiso_j |Q|^2 / 2) exp(+2 pi i h.x_j), with Dans' form factors
(`xray_scattering_factor`, ITC coefficients) and Debye-Waller term; `tests/` checks it
against `Scatter.structure_factor`. Reflections beyond the limiting sphere
(|Q| > 4 pi / lambda at the chosen energy) are masked out, and so is F(000).

Variation comes from random displacements of every atom (the seed's sigma = a/20 along a,
optionally an isotropic one in angstrom), not from a rigid shift of the whole crystal: a
rigid shift leaves every amplitude unchanged and only moves the phases by 2 pi h.t, so the
same input would get different labels. The phase labels are stored at the canonical
origin (`inference.phase_grid.canonical_origin`: the highest maximum of the tapered
density at x = 0); the models' loss is invariant to the origin and the enantiomorph
anyway (see `training.phase_models`).

Data sets are split by structure *family* (prototype: fcc, rutile, spinel, ...), so a
held-out structure's geometry is never seen in training, not only its composition.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flakescan.inference.phase_grid import GRID, N_MAX, canonical_origin, grid_hkl

__all__ = [
    "DEFAULT_ENERGY_KEV",
    "CrystalStructure",
    "PhaseDataset",
    "dans_cif_paths",
    "dans_structure_factors",
    "displaced_positions",
    "generate_dataset",
    "limiting_sphere_mask",
    "load_cif",
    "load_dataset",
    "q_magnitudes",
    "split_structures",
    "structure_factors",
]

DEFAULT_ENERGY_KEV = 10.0
MIN_REFLECTIONS = 40  # a crystal with fewer reflections inside the sphere teaches nothing


@dataclass(frozen=True)
class CrystalStructure:
    """One crystal as Dans sees it: the expanded P1 cell."""

    name: str
    family: str
    lattice: np.ndarray  # (3, 3) rows a, b, c in angstrom (Dans' Cell.UV())
    frac: np.ndarray  # (n, 3) fractional positions
    elements: tuple[str, ...]
    occupancy: np.ndarray  # (n,)
    uiso: np.ndarray  # (n,) angstrom^2
    source: str = ""

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    def with_default_uiso(self, uiso: float) -> CrystalStructure:
        """Atoms without a thermal parameter (Uiso = 0) get `uiso`; others keep theirs."""
        if uiso <= 0:
            return self
        return replace(self, uiso=np.where(self.uiso > 0, self.uiso, uiso))


def dans_cif_paths() -> list[Path]:
    """The CIFs shipped with Dans_Diffraction (magnetic .mcif ones included)."""
    import Dans_Diffraction

    folder = Path(Dans_Diffraction.__file__).parent / "Structures"
    return sorted([*folder.glob("*.cif"), *folder.glob("*.mcif")])


def _dans_crystal(path: Path):
    import Dans_Diffraction as dd

    with contextlib.redirect_stdout(io.StringIO()):
        return dd.Crystal(str(path))


def load_cif(path: Path, name: str | None = None, family: str | None = None) -> CrystalStructure:
    """A CIF read by Dans_Diffraction, as its expanded P1 cell."""
    path = Path(path)
    xtl = _dans_crystal(path)
    uvw, atom_type, _label, occ, uiso, _moment = xtl.Structure.get()
    if len(uvw) == 0:
        raise ValueError(f"{path}: Dans_Diffraction found no atoms in this CIF")
    return CrystalStructure(
        name=name or path.stem,
        family=family or path.stem,
        lattice=np.asarray(xtl.Cell.UV(), dtype=np.float64),
        frac=np.mod(np.asarray(uvw, dtype=np.float64), 1.0),
        elements=tuple(str(t) for t in atom_type),
        occupancy=np.asarray(occ, dtype=np.float64),
        uiso=np.asarray(uiso, dtype=np.float64),
        source=str(path),
    )


def q_magnitudes(lattice: np.ndarray, n_max: int = N_MAX) -> np.ndarray:
    """|Q| = |2 pi h B| in 1/angstrom on the (G, G, G) grid (B: reciprocal basis)."""
    recip = 2 * np.pi * np.linalg.inv(np.asarray(lattice, dtype=np.float64)).T
    return np.linalg.norm(grid_hkl(n_max).astype(np.float64) @ recip, axis=-1)


def limiting_sphere_mask(
    lattice: np.ndarray, energy_kev: float = DEFAULT_ENERGY_KEV, n_max: int = N_MAX
) -> np.ndarray:
    """True for reflections inside the limiting sphere |Q| <= 4 pi / lambda, F(000) off."""
    wavelength = 12.398419843320026 / energy_kev  # hc in keV angstrom
    mask = q_magnitudes(lattice, n_max) <= 4 * np.pi / wavelength
    mask[n_max, n_max, n_max] = False
    return mask


def _atomic_factors(structure: CrystalStructure, n_max: int) -> np.ndarray:
    """(n_atoms, G, G, G) f_j(|Q|) occ_j DW_j(|Q|) with Dans' form factors and DW term."""
    from Dans_Diffraction import functions_crystallography as fc

    q = q_magnitudes(structure.lattice, n_max).ravel()
    ff = fc.xray_scattering_factor(list(structure.elements), q)  # (H, n)
    dw = fc.debyewaller(structure.uiso, q)  # (H, n)
    g = 2 * n_max + 1
    return (ff * dw * structure.occupancy[None, :]).T.reshape(-1, g, g, g)


def structure_factors(
    structure: CrystalStructure,
    positions: np.ndarray | None = None,
    n_max: int = N_MAX,
    chunk: int = 64,
) -> np.ndarray:
    """F(h) on the (G, G, G) grid for the structure, or for each of (S, n, 3) fractional
    position sets of its atoms: (G, G, G) or (S, G, G, G) complex128.

    exp(2 pi i h.x) factorises per axis, so the sum is an einsum of per-atom 1-D factors
    against the (n, G, G, G) atomic factors: no (reflections x atoms) phase matrix per
    sample.
    """
    single = positions is None
    pos = structure.frac[None] if single else np.asarray(positions, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[1:] != structure.frac.shape:
        raise ValueError(f"positions must be (S, {len(structure.frac)}, 3), got {pos.shape}")
    atomic = _atomic_factors(structure, n_max)
    r = np.arange(-n_max, n_max + 1)
    out = np.empty((len(pos), *atomic.shape[1:]), dtype=np.complex128)
    for i in range(0, len(pos), chunk):
        p = pos[i : i + chunk]
        e = np.exp(2j * np.pi * p[..., None] * r)  # (s, n, 3, G)
        out[i : i + chunk] = np.einsum(
            "njkl,snj,snk,snl->sjkl", atomic, e[:, :, 0], e[:, :, 1], e[:, :, 2], optimize=True
        )
    return out[0] if single else out


def dans_structure_factors(
    path: Path, hkl: np.ndarray, energy_kev: float = DEFAULT_ENERGY_KEV
) -> np.ndarray:
    """Dans_Diffraction's own `Scatter.structure_factor` for a CIF (the reference)."""
    xtl = _dans_crystal(Path(path))
    with contextlib.redirect_stdout(io.StringIO()):
        xtl.Scatter.setup_scatter(scattering_type="xray", energy_kev=energy_kev, output=False)
        return np.asarray(xtl.Scatter.structure_factor(np.asarray(hkl, dtype=float)))


def displaced_positions(
    structure: CrystalStructure,
    rng: np.random.Generator,
    n: int,
    sigma_a: float = 0.05,
    sigma_iso_angstrom: float = 0.0,
) -> np.ndarray:
    """(n, atoms, 3) fractional positions, every atom moved independently: by N(0, sigma_a)
    of a along a (the seed's a/20 for 0.05), plus an isotropic N(0, sigma_iso) in A."""
    pos = np.repeat(structure.frac[None], n, axis=0)
    if sigma_a > 0:
        pos[..., 0] += rng.normal(0.0, sigma_a, pos.shape[:2])
    if sigma_iso_angstrom > 0:
        cart = rng.normal(0.0, sigma_iso_angstrom, pos.shape)
        pos += cart @ np.linalg.inv(structure.lattice)
    return np.mod(pos, 1.0)


def split_structures(
    structures: Sequence[CrystalStructure],
    n_test: int,
    n_select: int = 0,
    seed: int = 0,
    max_held_out_family: int = 3,
) -> dict[str, str]:
    """Structure name -> "train" | "select" | "test", whole families at a time.

    Families are shuffled (seeded) and given to "test" until it holds >= n_test
    structures, then to "select" (held-out structures for choosing a model, never the
    test ones) until >= n_select. Families larger than `max_held_out_family` (fcc, bcc,
    hcp, rocksalt...) and the synthetic "random" one always train: a held-out member of
    a big family would be an unseen composition of a seen geometry, not an unseen
    structure.
    """
    families: dict[str, list[str]] = {}
    for s in structures:
        families.setdefault(s.family, []).append(s.name)
    order = sorted(families)
    np.random.default_rng(seed).shuffle(order)
    out = {s.name: "train" for s in structures}
    counts = {"test": 0, "select": 0}
    wanted = {"test": n_test, "select": n_select}
    for fam in order:
        names = families[fam]
        if fam == "random" or len(names) > max_held_out_family:
            continue
        for split in ("test", "select"):
            if counts[split] < wanted[split]:
                for name in names:
                    out[name] = split
                counts[split] += len(names)
                break
    return out


@dataclass
class PhaseDataset:
    """Samples on the grid: raw |F|, canonical-origin phases, mask, and where each came from."""

    amplitudes: np.ndarray  # (S, G, G, G) float32 |F| (electrons)
    phases: np.ndarray  # (S, G, G, G) float32 radians, canonical origin
    structure_index: np.ndarray  # (S,) int into `names`
    split: np.ndarray  # (S,) str: train | val | select | test
    names: list[str]
    families: list[str]
    lattices: np.ndarray  # (n_structures, 3, 3)
    masks: np.ndarray  # (n_structures, G, G, G) bool
    f000: np.ndarray  # (S,) float32
    meta: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """(S, G, G, G) per-sample mask."""
        return self.masks[self.structure_index]

    def subset(self, split: str) -> np.ndarray:
        """Sample indices of one split."""
        return np.flatnonzero(self.split == split)


def generate_dataset(
    path: Path,
    structures: Iterable[CrystalStructure],
    splits: dict[str, str],
    *,
    samples_per_structure: int = 60,
    random_samples: int | None = None,
    val_fraction: float = 0.2,
    held_out_samples: int = 40,
    sigma_a: float = 0.05,
    sigma_iso_angstrom: float = 0.0,
    energy_kev: float = DEFAULT_ENERGY_KEV,
    default_uiso: float = 0.005,
    seed: int = 0,
    meta: dict | None = None,
    log=print,
) -> PhaseDataset:
    """Simulate, label at the canonical origin, write one .npz; returns the data set.

    Training structures get `samples_per_structure` displaced copies, a `val_fraction` of
    them held out ("val": held-out displacements of training structures); "select" and
    "test" structures get `held_out_samples` each; synthetic "random" crystals
    `random_samples` each (default: as training structures), all for training.
    """
    rng = np.random.default_rng(seed)
    amps, phases, sidx, split, f000 = [], [], [], [], []
    names, families, lattices, masks = [], [], [], []
    for i, s in enumerate(structures):
        s = s.with_default_uiso(default_uiso)
        role = splits.get(s.name, "train")
        n = samples_per_structure if role == "train" else held_out_samples
        if s.family == "random" and random_samples is not None:
            n = random_samples
        pos = displaced_positions(s, rng, n, sigma_a, sigma_iso_angstrom)
        f = structure_factors(s, pos)
        f, _ = canonical_origin(f)
        mask = limiting_sphere_mask(s.lattice, energy_kev)
        amps.append(np.abs(f).astype(np.float32))
        phases.append(np.where(mask, np.angle(f), 0.0).astype(np.float32))
        f000.append(f[:, N_MAX, N_MAX, N_MAX].real.astype(np.float32))
        sidx.append(np.full(n, i))
        if role == "train":
            n_val = 0 if s.family == "random" else round(val_fraction * n)
            split.append(np.array(["train"] * (n - n_val) + ["val"] * n_val))
        else:
            split.append(np.array([role] * n))
        names.append(s.name)
        families.append(s.family)
        lattices.append(s.lattice)
        masks.append(mask)
        log(f"  {s.name:26s} {s.family:18s} {len(s.elements):4d} atoms {role:6s} x{n}")
    ds = PhaseDataset(
        amplitudes=np.concatenate(amps),
        phases=np.concatenate(phases),
        structure_index=np.concatenate(sidx),
        split=np.concatenate(split),
        names=names,
        families=families,
        lattices=np.asarray(lattices),
        masks=np.asarray(masks),
        f000=np.concatenate(f000),
        meta={
            "grid": f"h,k,l in -{N_MAX}..{N_MAX} at index h+{N_MAX}",
            "energy_kev": energy_kev,
            "sigma_a": sigma_a,
            "sigma_iso_angstrom": sigma_iso_angstrom,
            "default_uiso": default_uiso,
            "samples_per_structure": samples_per_structure,
            "random_samples": random_samples,
            "val_fraction": val_fraction,
            "held_out_samples": held_out_samples,
            "seed": seed,
            "labels": "phases at the canonical origin (highest tapered-density maximum at 0)",
            **(meta or {}),
        },
    )
    _save(ds, Path(path))
    return ds


def _save(ds: PhaseDataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        amplitudes=ds.amplitudes,
        phases=ds.phases,
        structure_index=ds.structure_index,
        split=ds.split.astype("U8"),
        names=np.array(ds.names),
        families=np.array(ds.families),
        lattices=ds.lattices,
        masks=ds.masks,
        f000=ds.f000,
        meta=np.array(json.dumps(ds.meta)),
    )
    tmp.replace(path)


def load_dataset(path: Path) -> PhaseDataset:
    """Read a data set written by `generate_dataset`; ValueError naming what is wrong."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        missing = {"amplitudes", "phases", "structure_index", "split", "masks"} - set(z.files)
        if missing:
            raise ValueError(f"{path} is not a phase data set (missing {sorted(missing)})")
        ds = PhaseDataset(
            amplitudes=z["amplitudes"],
            phases=z["phases"],
            structure_index=z["structure_index"],
            split=z["split"],
            names=[str(x) for x in z["names"]],
            families=[str(x) for x in z["families"]],
            lattices=z["lattices"],
            masks=z["masks"],
            f000=z["f000"],
            meta=json.loads(str(z["meta"])),
        )
    if ds.amplitudes.shape[1:] != (GRID, GRID, GRID):
        raise ValueError(f"{path}: amplitudes are {ds.amplitudes.shape}, expected (S, 13, 13, 13)")
    return ds
