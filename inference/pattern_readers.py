"""Read one 2-D diffraction pattern from the files microscopes and scripts write.

Formats: raw binary (the caller names dtype and shape, since the file cannot), .npy, TIFF
(8/16-bit integer and 32-bit float, through pillow) and DigitalMicrograph .dm3/.dm4 through
rosettasciio, imported only when such a file is read (pip extra `diffraction`). Every reader
returns float32 pixels and what the file says about its calibration: a pattern's mrad per
pixel follows from a reciprocal-space calibration and the beam energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = [
    "DIFFRACTION_EXTRA",
    "DiffractionPattern",
    "PatternMetadata",
    "electron_wavelength_angstrom",
    "load_npy",
    "read_dm",
    "read_npy",
    "read_pattern",
    "read_raw",
    "read_tiff",
]

DIFFRACTION_EXTRA = "diffraction"
_DM_SUFFIXES = (".dm3", ".dm4")
_TIFF_SUFFIXES = (".tif", ".tiff")
_RAW_SUFFIXES = (".raw", ".bin", ".dat")


def electron_wavelength_angstrom(energy_kev: float) -> float:
    """Relativistic electron wavelength (Å): 0.02508 at 200 keV, 0.01969 at 300 keV."""
    if energy_kev <= 0:
        raise ValueError(f"energy_kev must be positive, got {energy_kev}")
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = energy_kev * 1e3
    p = math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c)))
    return h / p * 1e10


class PatternMetadata(BaseModel):
    """What a file says about its pattern; None where it says nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    format: str  # "raw", "npy", "tiff", "dm3", "dm4"
    shape: tuple[int, int]
    dtype: str  # as stored in the file
    pixel_size: float | None = None  # per pixel, in pixel_unit
    pixel_unit: str | None = None  # e.g. "1/nm", "mrad"
    energy_kev: float | None = None
    mrad_per_px: float | None = None  # derived from pixel_size, pixel_unit and energy

    def with_energy(self, energy_kev: float) -> PatternMetadata:
        """The metadata with a beam energy the file lacked (mrad_per_px follows if it can)."""
        return self.model_copy(
            update={
                "energy_kev": energy_kev,
                "mrad_per_px": _mrad_per_px(self.pixel_size, self.pixel_unit, energy_kev),
            }
        )


@dataclass(frozen=True)
class DiffractionPattern:
    """A 2-D pattern as float32 and its metadata."""

    data: np.ndarray
    metadata: PatternMetadata
    extra: dict = field(default_factory=dict)  # format-specific tags (DM: Microscope Info)


def _mrad_per_px(size: float | None, unit: str | None, energy_kev: float | None) -> float | None:
    if size is None or unit is None:
        return None
    u = unit.strip().replace("Å", "A").replace("µ", "u")
    angular = {"mrad": 1.0, "rad": 1e3, "urad": 1e-3}
    if u in angular:
        return size * angular[u]
    per_length = {"1/nm": 0.1, "nm^-1": 0.1, "1/A": 1.0, "A^-1": 1.0, "1/pm": 100.0}
    if u in per_length and energy_kev:
        return size * per_length[u] * electron_wavelength_angstrom(energy_kev) * 1e3
    return None


def _as_2d_float32(data: np.ndarray, source: Path) -> np.ndarray:
    a = np.asarray(data)
    if a.ndim == 3 and 1 in a.shape:
        a = a.reshape([n for n in a.shape if n != 1])
    if a.ndim != 2:
        raise ValueError(f"{source}: a pattern must be 2-D, the file holds shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{source}: pixel type {a.dtype} is not a real number")
    return a.astype(np.float32)


def read_raw(
    path: Path | str, dtype: str | np.dtype, shape: tuple[int, int], offset: int = 0
) -> DiffractionPattern:
    """A headerless binary file of `shape` pixels of `dtype` ("<u2", "float32"...) at offset.

    Refuses a file whose size is not offset + shape x itemsize, naming both sizes: a wrong
    guess of dtype or shape would otherwise give a plausible-looking scrambled image.
    """
    path = Path(path)
    dt = np.dtype(dtype)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be two positive sizes, got {shape}")
    expected = offset + int(shape[0]) * int(shape[1]) * dt.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(
            f"{path}: file has {actual} bytes, but shape {tuple(shape)} of {dt} "
            f"at offset {offset} needs {expected}"
        )
    data = np.fromfile(path, dtype=dt, offset=offset).reshape(shape)
    meta = PatternMetadata(source=str(path), format="raw", shape=tuple(shape), dtype=dt.str)
    return DiffractionPattern(_as_2d_float32(data, path), meta)


def load_npy(path: Path | str) -> np.ndarray:
    """A .npy file's numeric array; ValueError naming the file for anything else (a pickle,
    an object array, bytes that are no .npy at all)."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a numeric .npy array ({exc})") from exc
    if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"{path}: not a numeric .npy array")
    return data


def read_npy(path: Path | str) -> DiffractionPattern:
    """A .npy array (no pickles)."""
    path = Path(path)
    data = load_npy(path)
    a = _as_2d_float32(data, path)
    meta = PatternMetadata(source=str(path), format="npy", shape=a.shape, dtype=data.dtype.str)
    return DiffractionPattern(a, meta)


def read_tiff(path: Path | str) -> DiffractionPattern:
    """A single-frame greyscale TIFF: 8/16/32-bit integer or 32-bit float."""
    from PIL import Image

    path = Path(path)
    with Image.open(path) as im:
        frames = getattr(im, "n_frames", 1)
        if frames != 1:
            raise ValueError(f"{path}: TIFF has {frames} frames; a pattern is one frame")
        if im.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
            raise ValueError(f"{path}: TIFF mode {im.mode!r} is not a greyscale pattern")
        data = np.array(im)
    a = _as_2d_float32(data, path)
    meta = PatternMetadata(source=str(path), format="tiff", shape=a.shape, dtype=data.dtype.str)
    return DiffractionPattern(a, meta)


def _import_dm_reader():
    try:
        from rsciio.digitalmicrograph import file_reader
    except ImportError as exc:
        raise ImportError(
            "reading .dm3/.dm4 needs rosettasciio: pip install 'flakescan["
            f"{DIFFRACTION_EXTRA}]' (or pip install rosettasciio)"
        ) from exc
    return file_reader


def _find_key(tree: object, key: str) -> object | None:
    """The first value stored under `key` anywhere in a nested dict (DM tag groups)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def read_dm(path: Path | str) -> DiffractionPattern:
    """A DigitalMicrograph .dm3/.dm4 image with its calibration and beam voltage."""
    path = Path(path)
    file_reader = _import_dm_reader()
    try:
        read = file_reader(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # the reader raises what it likes on a damaged file
        raise ValueError(f"{path}: not a readable DigitalMicrograph file ({exc})") from exc
    signals = [s for s in read if np.asarray(s["data"]).ndim >= 2]
    if not signals:
        raise ValueError(f"{path}: no image in the file")
    two_d = [s for s in signals if np.squeeze(s["data"]).ndim == 2]
    if not two_d:
        shapes = [tuple(np.shape(s["data"])) for s in signals]
        raise ValueError(f"{path}: images of shape {shapes}; a pattern is one 2-D frame")
    sig = max(two_d, key=lambda s: np.size(s["data"]))
    raw = np.asarray(sig["data"])
    a = _as_2d_float32(raw, path)
    axes = [ax for ax in sig.get("axes", []) if not ax.get("navigate", False)]
    size = unit = None
    if len(axes) == 2 and axes[0].get("units") == axes[1].get("units"):
        s0, s1 = float(axes[0]["scale"]), float(axes[1]["scale"])
        if axes[0].get("units") and math.isclose(s0, s1, rel_tol=1e-6):
            size, unit = s0, str(axes[0]["units"])
    info = _find_key(sig.get("original_metadata", {}), "Microscope Info") or {}
    voltage = info.get("Voltage") if isinstance(info, dict) else None
    energy = float(voltage) / 1e3 if isinstance(voltage, int | float) and voltage > 0 else None
    meta = PatternMetadata(
        source=str(path),
        format=path.suffix.lower().lstrip("."),
        shape=a.shape,
        dtype=raw.dtype.str,
        pixel_size=size,
        pixel_unit=unit,
        energy_kev=energy,
        mrad_per_px=_mrad_per_px(size, unit, energy),
    )
    extra = {"microscope_info": info} if isinstance(info, dict) else {}
    return DiffractionPattern(a, meta, extra)


def read_pattern(
    path: Path | str,
    dtype: str | np.dtype | None = None,
    shape: tuple[int, int] | None = None,
    offset: int = 0,
) -> DiffractionPattern:
    """Read a pattern by its suffix; raw files (.raw/.bin/.dat or any with dtype and shape)
    need dtype and shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if dtype is not None or shape is not None or suffix in _RAW_SUFFIXES:
        if dtype is None or shape is None:
            raise ValueError(f"{path}: a raw file needs both dtype and shape")
        return read_raw(path, dtype, shape, offset)
    if suffix == ".npy":
        return read_npy(path)
    if suffix in _TIFF_SUFFIXES:
        return read_tiff(path)
    if suffix in _DM_SUFFIXES:
        return read_dm(path)
    known = ", ".join((".npy", *_TIFF_SUFFIXES, *_DM_SUFFIXES, *_RAW_SUFFIXES))
    raise ValueError(f"{path}: unknown pattern format {suffix!r} (known: {known})")
