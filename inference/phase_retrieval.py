"""Phases of measured structure-factor amplitudes from a phase-retrieval model (served).

numpy + ONNX Runtime only. Reads measured reflections (SHELX HKLF 4 `.hkl`, or CSV with
columns h,k,l,F), places them on the model's grid (h, k, l in -6..6; Friedel mates merged:
|F(h)| = |F(-h)| for normal scattering), runs the model through `backends.create_backend`,
and rebuilds the density from the measured amplitudes with the predicted phases.

Amplitudes fix the structure only up to a translation and the enantiomorph, so the
phases are one representative of that family: the result is moved so that the highest
maximum of the map is at the origin (`phase_grid.canonical_origin`); its inverse (all
phases negated) is an equally valid answer. Intensities are on an arbitrary scale, so the
density is given in units of its own rms.

    analyze_phase("crystal.hkl", "phase_unet", "crystal-phase.png")  -> dict (JSON-able)
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import InferenceBackend, create_backend
from .model_card import ModelCard
from .phase_grid import (
    GRID,
    N_MAX,
    canonical_origin,
    decode_phases,
    density,
    grid_hkl,
    model_input,
)
from .registry import ModelRegistry

__all__ = [
    "OUTPUT_ENCODING",
    "OUTPUT_NAME",
    "PHASE_TASK",
    "REPRESENTATION",
    "GridAmplitudes",
    "PhaseModel",
    "ReflectionError",
    "Reflections",
    "analyze_phase",
    "analyze_reflections",
    "place_on_grid",
    "plot_density_slices",
    "read_amplitude_csv",
    "read_hkl",
    "read_reflections",
    "write_hkl",
]

PHASE_TASK = "phase-retrieval"
OUTPUT_NAME = "phase_vec"
OUTPUT_ENCODING = "cos_sin_phase_per_reflection_friedel_symmetric"
REPRESENTATION = (
    "h,k,l in -6..6 at index h+6; channel 0 |F| / rms(|F|) over measured reflections "
    "(0 where unmeasured and at 000), channel 1 measured mask"
)


class ReflectionError(ValueError):
    """A reflection file that cannot be read; the message names the line and field."""


@dataclass(frozen=True)
class Reflections:
    """Reflections as read: indices, amplitudes |F| (sqrt(max(I, 0)) for intensities)."""

    hkl: np.ndarray  # (n, 3) int
    amplitude: np.ndarray  # (n,) float
    source_format: str
    negative_intensities: int = 0
    source: str = ""


def _field(line: str, lo: int, hi: int, kind, what: str, path: Path, lineno: int):
    text = line[lo:hi].strip()
    try:
        return kind(text)
    except ValueError:
        raise ReflectionError(
            f"{path}:{lineno}: {what} (columns {lo + 1}-{hi}) is {text!r}, not "
            f"{'an integer' if kind is int else 'a number'}; HKLF 4 is FORMAT(3I4, 2F8.2)"
        ) from None


def read_hkl(path: Path) -> Reflections:
    """SHELX HKLF 4: h, k, l (I4 each), I and sigma(I) (F8 each), optional batch (I4);
    fixed columns; ends at the record 0 0 0 (or at the end of the file). Amplitudes are
    sqrt(max(I, 0)); negative intensities are counted."""
    path = Path(path)
    rows, intensities = [], []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if len(line.rstrip()) < 20:
            raise ReflectionError(
                f"{path}:{lineno}: record {line!r} is too short for HKLF 4 "
                "(h k l in columns 1-12, I in 13-20, sigma in 21-28)"
            )
        h = _field(line, 0, 4, int, "h", path, lineno)
        k = _field(line, 4, 8, int, "k", path, lineno)
        l_ = _field(line, 8, 12, int, "l", path, lineno)
        if h == k == l_ == 0:
            break
        intensity = _field(line, 12, 20, float, "I", path, lineno)
        if len(line.rstrip()) > 20:
            sigma = _field(line, 20, 28, float, "sigma(I)", path, lineno)
            if sigma < 0:
                raise ReflectionError(f"{path}:{lineno}: sigma(I) is {sigma}, must be >= 0")
        if not np.isfinite(intensity):
            raise ReflectionError(f"{path}:{lineno}: I is {intensity}, not finite")
        rows.append((h, k, l_))
        intensities.append(intensity)
    if not rows:
        raise ReflectionError(f"{path}: no reflections before the 0 0 0 record")
    i = np.asarray(intensities, dtype=np.float64)
    return Reflections(
        hkl=np.asarray(rows, dtype=np.int64),
        amplitude=np.sqrt(np.maximum(i, 0.0)),
        source_format="shelx-hklf4",
        negative_intensities=int((i < 0).sum()),
        source=str(path),
    )


def write_hkl(path: Path, hkl: np.ndarray, intensity: np.ndarray, sigma: np.ndarray) -> Path:
    """Write SHELX HKLF 4 (3I4, 2F8.2) with the closing 0 0 0 record."""
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    lines = []
    for (h, k, l_), i, s in zip(hkl, intensity, sigma, strict=True):
        line = f"{h:4d}{k:4d}{l_:4d}{i:8.2f}{s:8.2f}"
        if len(line) != 28:
            raise ValueError(
                f"reflection {h} {k} {l_} with I = {i:g}, sigma = {s:g} does not fit the "
                "HKLF 4 fields (3I4, 2F8.2): scale the intensities below 100000"
            )
        lines.append(line)
    lines.append(f"{0:4d}{0:4d}{0:4d}{0:8.2f}{0:8.2f}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_amplitude_csv(path: Path) -> Reflections:
    """CSV with a header naming columns h, k, l and F (|F|, >= 0); other columns ignored."""
    path = Path(path)
    text = path.read_text(errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    missing = [c for c in ("h", "k", "l", "f") if c not in cols]
    if missing:
        raise ReflectionError(
            f"{path}: CSV needs columns h, k, l, F; missing {', '.join(missing)} "
            f"(found {', '.join(reader.fieldnames or []) or 'no header'})"
        )
    rows, amps = [], []
    for lineno, rec in enumerate(reader, start=2):
        try:
            idx = tuple(int(str(rec[cols[c]]).strip()) for c in ("h", "k", "l"))
        except (TypeError, ValueError):
            raise ReflectionError(
                f"{path}:{lineno}: h, k, l must be integers, got "
                f"{[rec.get(cols[c]) for c in ('h', 'k', 'l')]}"
            ) from None
        try:
            f = float(str(rec[cols["f"]]).strip())
        except (TypeError, ValueError):
            raise ReflectionError(
                f"{path}:{lineno}: F is {rec.get(cols['f'])!r}, not a number"
            ) from None
        if not (np.isfinite(f) and f >= 0):
            raise ReflectionError(f"{path}:{lineno}: F is {f}, an amplitude must be >= 0")
        rows.append(idx)
        amps.append(f)
    if not rows:
        raise ReflectionError(f"{path}: no reflections after the header")
    return Reflections(
        hkl=np.asarray(rows, dtype=np.int64),
        amplitude=np.asarray(amps, dtype=np.float64),
        source_format="csv-h-k-l-F",
        source=str(path),
    )


def read_reflections(path: Path) -> Reflections:
    """By suffix: .hkl (SHELX HKLF 4) or .csv (h,k,l,F)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reflection file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".hkl":
        return read_hkl(path)
    if suffix == ".csv":
        return read_amplitude_csv(path)
    raise ReflectionError(f"{path}: unknown reflection format {suffix!r} (expected .hkl or .csv)")


@dataclass(frozen=True)
class GridAmplitudes:
    """Measured amplitudes on the model grid."""

    amplitudes: np.ndarray  # (13, 13, 13)
    mask: np.ndarray  # (13, 13, 13) bool, F(000) off
    read: int
    on_grid: int  # distinct grid reflections measured (a Friedel pair counts twice)
    outside_grid: int  # reflections with an index beyond +-6, not used


def place_on_grid(hkl: np.ndarray, amplitude: np.ndarray) -> GridAmplitudes:
    """Amplitudes on the 13^3 grid: repeated observations of h and of -h averaged as
    intensities (|F(h)| = |F(-h)|), reflections beyond +-6 left out, F(000) never used."""
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    amp = np.asarray(amplitude, dtype=np.float64).reshape(-1)
    inside = np.all(np.abs(hkl) <= N_MAX, axis=1)
    idx = hkl[inside] + N_MAX
    sums = np.zeros((GRID,) * 3)
    counts = np.zeros((GRID,) * 3)
    for sign_idx in (idx, 2 * N_MAX - idx):  # each observation also measures its mate
        np.add.at(sums, tuple(sign_idx.T), amp[inside] ** 2)
        np.add.at(counts, tuple(sign_idx.T), 1)
    mask = counts > 0
    mask[N_MAX, N_MAX, N_MAX] = False
    grid = np.where(mask, np.sqrt(sums / np.maximum(counts, 1)), 0.0)
    return GridAmplitudes(
        amplitudes=grid,
        mask=mask,
        read=len(hkl),
        on_grid=int(mask.sum()),
        outside_grid=int((~inside).sum()),
    )


class PhaseModel:
    """A phase-retrieval model on a backend, checked against its card."""

    def __init__(self, backend: InferenceBackend, card: ModelCard) -> None:
        if card.task != PHASE_TASK:
            raise ValueError(f"model {card.name!r} is a {card.task!r} model, not {PHASE_TASK!r}")
        if list(card.input.shape[1:]) != [2, GRID, GRID, GRID]:
            raise ValueError(
                f"model {card.name!r} expects input {card.input.shape}, not (n, 2, 13, 13, 13)"
            )
        self.backend, self.card = backend, card

    def predict(self, amplitudes: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(n, 13, 13, 13) or (13, 13, 13) amplitudes and mask -> phases (n, 13, 13, 13)."""
        x = model_input(amplitudes, mask)
        out = np.concatenate([self.backend.run(x[i : i + 64]) for i in range(0, len(x), 64)])
        return decode_phases(out)


def _peaks(rho: np.ndarray, count: int = 5) -> list[dict]:
    from scipy import ndimage

    is_max = rho == ndimage.maximum_filter(rho, size=3, mode="wrap")
    idx = np.flatnonzero(is_max)
    idx = idx[np.argsort(rho.ravel()[idx])[::-1][:count]]
    n = rho.shape[0]
    return [
        {
            "frac": [round(float(v) / n, 4) for v in np.unravel_index(i, rho.shape)],
            "height_rms": round(float(rho.ravel()[i]), 3),
        }
        for i in idx
    ]


def plot_density_slices(rho: np.ndarray, grid: GridAmplitudes, path: Path, title: str = "") -> Path:
    """Validation picture: the density's planes x = 0, y = 0, z = 0 through its highest
    maximum (at the origin) and the measured amplitudes of the l = 0 layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    planes = [("x = 0 (y, z)", rho[0]), ("y = 0 (x, z)", rho[:, 0]), ("z = 0 (x, y)", rho[:, :, 0])]
    for ax, (label, plane) in zip(axes, planes, strict=False):
        im = ax.imshow(plane.T, origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
        ax.set_title(f"density, {label}")
        fig.colorbar(im, ax=ax, fraction=0.046, label="rho / rms")
    layer = np.where(grid.mask[:, :, N_MAX], grid.amplitudes[:, :, N_MAX], np.nan)
    im = axes[3].imshow(layer.T, origin="lower", extent=(-6.5, 6.5, -6.5, 6.5), cmap="magma")
    axes[3].set_title("measured |F|, l = 0 (blank: none)")
    axes[3].set_xlabel("h")
    axes[3].set_ylabel("k")
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def analyze_reflections(refl: Reflections, model: PhaseModel, out_png: Path | None = None) -> dict:
    """Phases and density of read reflections by a served model: a JSON-able summary
    (and the validation picture, if `out_png`). ReflectionError if none is on the grid."""
    grid = place_on_grid(refl.hkl, refl.amplitude)
    if grid.on_grid == 0:
        raise ReflectionError(
            f"{refl.source or 'reflections'}: no reflection with -6 <= h, k, l <= 6 (but 000)"
        )
    phases = model.predict(grid.amplitudes, grid.mask)[0]
    f = np.where(grid.mask, grid.amplitudes * np.exp(1j * phases), 0)
    f, _ = canonical_origin(f)
    phases = np.where(grid.mask, np.angle(f), 0.0)
    rho = density(f, 24)
    rho = rho / max(float(np.sqrt(np.mean(rho**2))), 1e-300)
    hkl = grid_hkl()
    half = grid.mask & (np.arange(GRID**3).reshape((GRID,) * 3) > GRID**3 // 2)
    listed = [
        {
            "h": int(h[0]),
            "k": int(h[1]),
            "l": int(h[2]),
            "F": round(float(a), 4),
            "phase_deg": round(float(np.degrees(ph)), 2),
        }
        for h, a, ph in zip(hkl[half], grid.amplitudes[half], phases[half], strict=True)
    ]
    result = {
        "file": refl.source,
        "format": refl.source_format,
        "model": model.card.name,
        "task": PHASE_TASK,
        "backend": model.backend.describe(),
        "reflections": {
            "read": grid.read,
            "on_grid": grid.on_grid,
            "outside_grid": grid.outside_grid,
            "negative_intensities": refl.negative_intensities,
        },
        "origin": "highest density maximum moved to 0; the inverse (phases negated) is "
        "equally valid",
        "density": {
            "grid": 24,
            "units": "rms of the map (F(000) not included, Hann taper)",
            "min": round(float(rho.min()), 3),
            "max": round(float(rho.max()), 3),
            "peaks": _peaks(rho),
        },
        "phases": listed,
    }
    if out_png is not None:
        title = f"{Path(refl.source).name or 'reflections'}: {model.card.name}"
        result["picture"] = str(plot_density_slices(rho, grid, out_png, title))
    return result


def analyze_phase(
    path: Path,
    model: str | Path,
    out_png: Path | None = None,
    *,
    registry: tuple[Path, ...] | list[Path] = (),
    backend: str = "onnxruntime",
    device: str = "cpu",
    threads: int = 1,
) -> dict:
    """Read a reflection file, resolve the model, `analyze_reflections`.

    `model` is a registry name (searched in `registry`, then the shipped models) or a
    path to an .onnx file with its card. The file is read before the model is opened.
    """
    refl = read_reflections(Path(path))
    entry = ModelRegistry(list(registry)).resolve(model, PHASE_TASK)
    phase_model = PhaseModel(create_backend(entry.path, backend, device, threads), entry.card)
    result = analyze_reflections(refl, phase_model, out_png)
    result["model_path"] = str(entry.path)
    return result
