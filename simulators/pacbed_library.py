"""Read a PACBED library lazily: the index at once, each tilt's stack memory-mapped on use.

A trainer draws thousands of patterns per epoch from a library of several hundred MB, so
stacks are opened with np.load(mmap_mode="r") and only the patterns drawn are read. Any
tilt that a symmetry operation maps onto a stored one is served (pacbed_symmetry.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .pacbed import LibrarySpec
from .pacbed_io import FORMAT, split_path, tilt_stem
from .pacbed_symmetry import apply_op, group_ops, map_tilt
from .pacbed_systems import MaterialSystem

__all__ = ["PacbedLibrary"]

_THICKNESS_TOL_A = 1e-3
_TILT_TOL_MRAD = 1e-6


class PacbedLibrary:
    """A library folder written by pacbed.simulate_library (complete or still running)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "library.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.folder} has no library.json: not a PACBED library")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, not {FORMAT!r}")
        self.spec = LibrarySpec.model_validate(self.meta["spec"])
        self.system = MaterialSystem.model_validate(self.meta["system"])
        with open(self.folder / "patterns.csv", newline="") as f:
            self.rows: list[dict[str, str]] = list(csv.DictReader(f))
        tilts = {(float(r["Mistilt_X"]), float(r["Mistilt_Y"])) for r in self.rows}
        self.tilts = np.array(sorted(tilts), float).reshape(-1, 2)
        first = self.rows[0]["Path"].split("#")[0] if self.rows else None
        self.thickness_a = np.array(
            [float(r["Thickness"]) for r in self.rows if r["Path"].startswith(f"{first}#")]
        )
        self._stacks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (
            f"PacbedLibrary({str(self.folder)!r}: {len(self.tilts)} tilts x "
            f"{len(self.thickness_a)} thicknesses)"
        )

    @property
    def symmetry(self):
        return self.system.symmetry

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def sampling_mrad(self) -> float:
        """Detector sampling of the stored patterns (mrad/px)."""
        return float(self.meta["sampling_mrad"])

    @property
    def conv_angle_mrad(self) -> float:
        return float(self.spec.conv_angle_mrad)

    @property
    def energy_kev(self) -> float:
        return float(self.spec.energy_kev)

    @property
    def disc_radius_px(self) -> float:
        """Radius of the bright-field disc in stored pixels."""
        return self.conv_angle_mrad / self.sampling_mrad

    def thickness_index(self, thickness_a: float) -> int:
        """Index of a stored thickness (Å); KeyError names the nearest one."""
        i = int(np.argmin(np.abs(self.thickness_a - thickness_a)))
        if abs(self.thickness_a[i] - thickness_a) > _THICKNESS_TOL_A:
            raise KeyError(
                f"thickness {thickness_a} Å is not in the library (nearest {self.thickness_a[i]})"
            )
        return i

    def has_tilt(self, tilt) -> bool:
        """Whether this exact tilt (mrad) has a stored stack."""
        if not len(self.tilts):
            return False
        d = np.abs(self.tilts - np.asarray(tilt, float)).max(axis=1)
        return float(d.min()) <= _TILT_TOL_MRAD

    def stack(self, tilt) -> np.ndarray:
        """The stored float16 stack (n_thickness, n, n) of one stored tilt, memory-mapped."""
        if not self.has_tilt(tilt):
            raise KeyError(f"tilt {tuple(tilt)} mrad has no stack in {self.folder}")
        stem = tilt_stem(tilt)
        if stem not in self._stacks:
            self._stacks[stem] = np.load(self.folder / "tilts" / f"{stem}.npy", mmap_mode="r")
        return self._stacks[stem]

    def resolve_tilt(self, tilt) -> tuple[np.ndarray, tuple[float, float]]:
        """An operation g and a stored tilt s with g·s = tilt; KeyError if there is none."""
        tilt = (float(tilt[0]), float(tilt[1]))
        for op in group_ops(self.symmetry):
            stored = map_tilt(np.linalg.inv(op).round().astype(int), tilt)
            if self.has_tilt(stored):
                return op, stored
        raise KeyError(
            f"tilt {tilt} mrad is not in the library nor {self.symmetry}-equivalent to a stored one"
        )

    def pattern(self, thickness_a: float, mx: float, my: float) -> np.ndarray:
        """The pattern (float32, max 1) at a stored thickness and a stored or equivalent tilt."""
        return self.pattern_by_index(self.thickness_index(thickness_a), (mx, my))

    def pattern_by_index(self, index: int, tilt) -> np.ndarray:
        """As pattern(), with the thickness given by its index in thickness_a."""
        op, stored = self.resolve_tilt(tilt)
        return apply_op(op, np.asarray(self.stack(stored)[index], np.float32))

    def load(self, path: str) -> np.ndarray:
        """The pattern a patterns.csv `Path` ("tilts/<stem>.npy#<index>") names."""
        stack, index = split_path(path)
        name = Path(stack).name.removesuffix(".npy")
        if name not in self._stacks:
            self._stacks[name] = np.load(self.folder / stack, mmap_mode="r")
        return np.asarray(self._stacks[name][index], np.float32)
