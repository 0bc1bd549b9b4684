"""Files of a PACBED library: names, atomic writes, the pattern index and the root register.

Kept apart from the simulation so the loader and the writer share one definition of the
`Path` convention and the column set, and so a killed run never leaves a half-written file
under a final name (every write goes to a temporary name in the same folder, then renames).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .pacbed import LibrarySpec, Series
    from .pacbed_systems import MaterialSystem

__all__ = [
    "FORMAT",
    "PATH_SEP",
    "PATTERN_COLUMNS",
    "REGISTER_COLUMNS",
    "atomic_write_bytes",
    "atomic_write_npy",
    "split_path",
    "tilt_stem",
    "update_register",
    "write_meta",
    "write_patterns_csv",
    "write_tilt",
]

_UMASK = os.umask(0)
os.umask(_UMASK)

FORMAT = "flakescan-pacbed-library"

# `Path` of one pattern: "<stack file relative to the library>#<thickness index>".
PATH_SEP = "#"
PATTERN_COLUMNS = (
    "Path",
    "Thickness",
    "Mistilt",
    "Conv_Angle",
    "Azimuth",
    "Energy",
    "Material",
    "Direction",
    "Sampling",
    "Mistilt_X",
    "Mistilt_Y",
    "Peak",
    "Detected",
)
REGISTER_COLUMNS = (
    "ID",
    "System",
    "Material",
    "Direction",
    "Energy",
    "Conv_Angle",
    "Frozen_Phonons",
    "Folder",
    "Status",
)


def tilt_stem(tilt: Sequence[float]) -> str:
    """File stem of a tilt's stack, e.g. "tilt_mx+2.00_my+1.00" (mrad, 0.01 mrad steps)."""
    mx, my = (float(t) + 0.0 for t in tilt)
    return f"tilt_mx{mx:+.2f}_my{my:+.2f}"


def split_path(path: str) -> tuple[str, int]:
    """("tilts/tilt_mx+2.00_my+1.00.npy", 17) from "tilts/tilt_mx+2.00_my+1.00.npy#17"."""
    stack, sep, index = path.rpartition(PATH_SEP)
    if not sep or not index.isdigit():
        raise ValueError(f"Path {path!r} is not '<stack>.npy{PATH_SEP}<index>'")
    return stack, int(index)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside path, then rename onto it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically (a stack is memory-mapped by readers, so it must be whole)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_patterns_csv(lib: Path, spec: LibrarySpec, system: MaterialSystem) -> int:
    """Rebuild patterns.csv from the tilts whose stacks exist; returns the row count."""
    rows: list[list[object]] = []
    for tilt in spec.tilts:
        stem = tilt_stem(tilt)
        if not (lib / "tilts" / f"{stem}.npy").exists():
            continue
        side = json.loads((lib / "tilts" / f"{stem}.json").read_text())
        mx, my = (float(t) for t in tilt)
        magnitude = math.hypot(mx, my)
        azimuth = math.degrees(math.atan2(my, mx)) % 360.0 if magnitude else 0.0
        for i, t in enumerate(side["thickness_a"]):
            rows.append(
                [
                    f"tilts/{stem}.npy{PATH_SEP}{i}",
                    round(t, 4),
                    round(magnitude, 6),
                    spec.conv_angle_mrad,
                    round(azimuth, 6),
                    spec.energy_kev,
                    system.material,
                    system.direction_label,
                    round(side["sampling_mrad"], 6),
                    mx,
                    my,
                    f"{side['peak'][i]:.6e}",
                    round(side["detected"][i], 6),
                ]
            )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PATTERN_COLUMNS)
    writer.writerows(rows)
    atomic_write_bytes(lib / "patterns.csv", buf.getvalue().encode())
    return len(rows)


def update_register(
    root: Path, folder: str, spec: LibrarySpec, system: MaterialSystem, status: str
) -> int:
    """Add or update this library's row in <root>/Register.csv; returns its ID.

    A folder keeps its ID; a new folder takes the next free one. A lock file serialises
    runs that share a root.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    register = root / "Register.csv"
    with open(root / ".Register.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows: list[dict[str, str]] = []
        if register.exists():
            with open(register, newline="") as f:
                rows = list(csv.DictReader(f))
        mine = next((r for r in rows if r["Folder"] == folder), None)
        if mine is None:
            mine = {"ID": str(max((int(r["ID"]) for r in rows), default=-1) + 1)}
            rows.append(mine)
        mine.update(
            System=str(system.id),
            Material=system.material,
            Direction=system.direction_label,
            Energy=f"{spec.energy_kev:g}",
            Conv_Angle=f"{spec.conv_angle_mrad:g}",
            Frozen_Phonons=str(spec.frozen_phonons),
            Folder=folder,
            Status=status,
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=REGISTER_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(register, buf.getvalue().encode())
        return int(mine["ID"])


def write_tilt(lib: Path, s: Series) -> None:
    """Sidecar first, stack last: a tilt counts as done when its stack exists."""
    peak = s.patterns.reshape(len(s.patterns), -1).max(axis=1)
    detected = s.patterns.reshape(len(s.patterns), -1).sum(axis=1)
    stem = str(lib / "tilts" / tilt_stem(s.tilt))
    sidecar = {
        "tilt_mrad": list(s.tilt),
        "thickness_a": [round(float(t), 6) for t in s.thickness_a],
        "peak": [float(p) for p in peak],
        "detected": [float(d) for d in detected],
        "sampling_mrad": s.sampling_mrad,
        "shape": list(s.patterns.shape),
        "seconds": round(s.seconds, 3),
        "seconds_per_pattern": round(s.seconds / len(s.patterns), 5),
    }
    atomic_write_bytes(Path(stem + ".json"), json.dumps(sidecar, indent=1).encode())
    normalised = s.patterns / np.maximum(peak, np.finfo(np.float32).tiny)[:, None, None]
    atomic_write_npy(Path(stem + ".npy"), normalised.astype(np.float16))


def write_meta(lib: Path, spec: LibrarySpec, system: MaterialSystem) -> dict:
    """Rewrite library.json from the spec and the tilts done so far (timings included)."""
    import abtem

    stems = [lib / "tilts" / tilt_stem(t) for t in spec.tilts]
    done = [json.loads(Path(f"{p}.json").read_text()) for p in stems if Path(f"{p}.npy").exists()]
    secs = np.array([d["seconds"] for d in done], float)
    per = np.array([d["seconds_per_pattern"] for d in done], float)
    first = done[0] if done else {}
    meta = {
        "format": FORMAT,
        "version": 1,
        "spec": spec.model_dump(mode="json"),
        "system": system.model_dump(mode="json"),
        "abtem": abtem.__version__,
        "complete": len(done) == len(spec.tilts),
        "tilts_done": len(done),
        "tilts_total": len(spec.tilts),
        "thickness_a": first.get("thickness_a"),
        "pattern_shape": first.get("shape", [None])[1:] or None,
        "sampling_mrad": first.get("sampling_mrad"),
        "dtype": "float16",
        "conventions": {
            "path": f"<stack .npy relative to the library>{PATH_SEP}<thickness index>",
            "array": "axis 0 along kx, axis 1 along ky, odd size, k = 0 at the centre pixel",
            "normalisation": "each pattern divided by its maximum (column Peak)",
            "azimuth": "atan2(Mistilt_Y, Mistilt_X) in degrees, from +kx towards +ky",
            "units": {
                "Thickness": "Å",
                "Mistilt": "mrad",
                "Conv_Angle": "mrad",
                "Azimuth": "deg",
                "Energy": "keV",
                "Sampling": "mrad/px",
            },
        },
        "timing": {
            "seconds_per_series_mean": float(secs.mean()) if len(secs) else None,
            "seconds_per_series_max": float(secs.max()) if len(secs) else None,
            "seconds_per_pattern_mean": float(per.mean()) if len(per) else None,
            "seconds_total": float(secs.sum()),
        },
    }
    atomic_write_bytes(lib / "library.json", json.dumps(meta, indent=1).encode())
    return meta
