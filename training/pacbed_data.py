"""Training and held-out PACBED patterns drawn from libraries, through the served preprocessing.

Every pattern a network or an evaluation sees is made here from a library pattern by the
augmentations of simulators/pacbed_augment.py in the microscope's order (any azimuth through
the symmetry, bilinear tilt interpolation, camera-length scale, detector rotation, centre
offset, blur, Poisson noise at a log-uniform dose) and then, for the network, by the very
`preprocess_pattern` measured files go through (inference/pacbed_preprocess.py).

Held out (never drawn for training):

* every k-th thickness of each library and optionally a whole block of thicknesses
  (`thickness_split`), so the thickness heads are tested between the thicknesses they learnt
  and across a gap wider than a library step;
* a random set of interior wedge tilts (`choose_heldout_tilts`) with all their symmetry
  equivalents: a training tilt whose bilinear interpolation would touch one of them is
  redrawn, so no part of a held-out pattern leaks into training. Held-out test patterns are
  the simulated patterns at exactly those tilts (no interpolation) at held-out thicknesses.

A library still being simulated covers only some tilts: `covered_tilt_radius` is the largest
mistilt every azimuth of which can be interpolated from the tilts already stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flakescan.inference.pacbed_preprocess import PreprocessConfig, preprocess_pattern
from flakescan.simulators.pacbed_augment import (
    AugmentSpec,
    apply_microscope,
    pattern_at_tilt,
    random_tilt,
)
from flakescan.simulators.pacbed_library import PacbedLibrary
from flakescan.simulators.pacbed_symmetry import group_ops, map_tilt

__all__ = [
    "Draw",
    "PacbedSampler",
    "choose_heldout_tilts",
    "covered_tilt_radius",
    "thickness_split",
]

_W_EPS = 1e-9  # bilinear weights below this are not read (pacbed_augment does the same)


def _stored(lib: PacbedLibrary, grid_point: tuple[float, float]) -> tuple[float, float] | None:
    try:
        return lib.resolve_tilt(grid_point)[1]
    except KeyError:
        return None


def covered_tilt_radius(lib: PacbedLibrary) -> float:
    """The largest mistilt (mrad) at which every azimuth has all four bilinear neighbours
    stored (directly or by symmetry): the whole library's tilt_max once it is complete."""
    step = lib.spec.tilt_step_mrad
    n = math.ceil(lib.spec.tilt_max_mrad / step) + 1
    have = {
        (ix, iy): _stored(lib, (ix * step + 0.0, iy * step + 0.0)) is not None
        for ix in range(-n, n + 1)
        for iy in range(-n, n + 1)
    }
    radius = math.inf
    for a in range(-n, n):
        for b in range(-n, n):
            if all(have[(a + dx, b + dy)] for dx in (0, 1) for dy in (0, 1)):
                continue
            da = 0 if a <= 0 <= a + 1 else min(abs(a), abs(a + 1))
            db = 0 if b <= 0 <= b + 1 else min(abs(b), abs(b + 1))
            radius = min(radius, math.hypot(da, db) * step)
    return float(min(radius, lib.spec.tilt_max_mrad))


def thickness_split(
    thickness_nm: np.ndarray, every: int, block_nm: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) into a library's thicknesses.

    Every `every`-th index from every//2 is held out (0: none of them), and so is every
    thickness inside `block_nm` (lo, hi), a whole range the network never sees, which tests
    interpolation across more than one library step. With nothing held out the held-out sets
    reuse the training thicknesses."""
    t = np.asarray(thickness_nm, float)
    idx = np.arange(len(t))
    if every <= 0 and block_nm is None:
        return idx, idx
    held = (idx % every) == (every // 2) if every > 0 else np.zeros(len(t), bool)
    if block_nm is not None:
        held |= (t >= block_nm[0]) & (t <= block_nm[1])
    if held.all() or not held.any():
        raise ValueError(
            f"holdout_thickness_every = {every}, holdout_thickness_block_nm = {block_nm} "
            f"leave no thickness to {'train' if held.all() else 'test'} "
            f"(library thicknesses {t[0]:g}-{t[-1]:g} nm)"
        )
    return idx[~held], idx[held]


def choose_heldout_tilts(
    libraries: Sequence[PacbedLibrary],
    max_tilt_mrad: float,
    count: int,
    rng: np.random.Generator,
) -> list[tuple[float, float]]:
    """`count` wedge tilts stored in every library with 0 < |t| <= max_tilt - step (the
    coarsest tilt step: the test interpolates between trained tilts rather than
    extrapolating, and every library has the exact held-out pattern)."""
    if count <= 0:
        return []
    step = max(lib.spec.tilt_step_mrad for lib in libraries)
    stored = [{tuple(np.round(t, 6)) for t in lib.tilts} for lib in libraries]
    pool = sorted(
        (float(t[0]) + 0.0, float(t[1]) + 0.0)
        for t in stored[0]
        if all(t in other for other in stored[1:])
        and 0 < math.hypot(*t) <= max_tilt_mrad - step + 1e-9
    )
    if len(pool) < count + 1:
        raise ValueError(
            f"holdout_tilts = {count}: only {len(pool)} interior tilts (0 < |t| <= "
            f"{max_tilt_mrad - step:g} mrad) are stored in every library; hold out fewer or "
            "wait for the libraries"
        )
    pick = rng.choice(len(pool), size=count, replace=False)
    return sorted(pool[i] for i in pick)


@dataclass
class Draw:
    """Patterns with their labels: raw (augmented, library frame) or preprocessed."""

    patterns: np.ndarray | list[np.ndarray]  # (n, h, w); raw from libraries of two sizes: a list
    thickness_nm: np.ndarray
    mistilt_mrad: np.ndarray
    scale: np.ndarray  # camera-length factor applied to the library pattern
    log_scale: np.ndarray  # log(radius the preprocessing used / true radius); 0 for raw
    conv_angle: np.ndarray
    tilt: np.ndarray  # (n, 2) mrad, crystal frame
    library: np.ndarray  # index into the sampler's libraries

    def __len__(self) -> int:
        return len(self.patterns)


class PacbedSampler:
    """Draws augmented patterns from one or more libraries (one per convergence angle)."""

    def __init__(
        self,
        libraries: Sequence[PacbedLibrary],
        max_tilt_mrad: float,
        augment: AugmentSpec,
        config: PreprocessConfig,
        holdout_thickness_every: int = 8,
        heldout_tilts: Sequence[tuple[float, float]] = (),
        holdout_thickness_block_nm: tuple[float, float] | None = None,
        radius_jitter: float = 0.02,
        measured_fraction: float = 0.5,
    ) -> None:
        self.libraries = list(libraries)
        self.max_tilt = float(max_tilt_mrad)
        self.augment = augment
        self.config = config
        self.radius_jitter = float(radius_jitter)
        self.measured_fraction = float(measured_fraction)
        self.heldout_tilts = {(float(a) + 0.0, float(b) + 0.0) for a, b in heldout_tilts}
        self.splits = [
            thickness_split(
                lib.thickness_a / 10, holdout_thickness_every, holdout_thickness_block_nm
            )
            for lib in self.libraries
        ]
        self._excluded: list[dict[tuple[int, int], bool]] = [{} for _ in self.libraries]

    # -- tilts -----------------------------------------------------------------------------
    def _touches_heldout(self, k: int, tilt: tuple[float, float]) -> bool:
        """Whether bilinear interpolation at `tilt` reads a held-out tilt (or its image)."""
        if not self.heldout_tilts:
            return False
        lib = self.libraries[k]
        step = lib.spec.tilt_step_mrad
        u = np.asarray(tilt, float) / step
        base = np.floor(u)
        frac = u - base
        cache = self._excluded[k]
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            w = (frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
            if w < _W_EPS:
                continue
            key = (int(base[0]) + dx, int(base[1]) + dy)
            if key not in cache:
                stored = _stored(lib, (key[0] * step + 0.0, key[1] * step + 0.0))
                cache[key] = stored in self.heldout_tilts
            if cache[key]:
                return True
        return False

    def _training_tilt(self, k: int, rng: np.random.Generator):
        for _ in range(1000):
            mx, my, mag, _az = random_tilt(rng, self.max_tilt)
            if not self._touches_heldout(k, (mx, my)):
                return (mx, my), mag
        raise RuntimeError("no training tilt avoids the held-out tilts in 1000 draws")

    def _stored_tilts(self, k: int) -> list[tuple[float, float]]:
        """Stored wedge tilts within the mistilt range (exact patterns when none is held out)."""
        lib = self.libraries[k]
        mags = np.hypot(lib.tilts[:, 0], lib.tilts[:, 1])
        return [tuple(map(float, t)) for t in lib.tilts[mags <= self.max_tilt + 1e-9]]

    # -- patterns --------------------------------------------------------------------------
    def _augment(self, p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        pattern, scale, _rotation = apply_microscope(p, rng, self.augment)
        return pattern, scale

    def raw(self, rng: np.random.Generator, heldout: bool = False, exact_tilts: bool = False):
        """One augmented pattern in the library's frame and its labels.

        heldout: a held-out thickness; exact_tilts: a held-out tilt (or, if none is held out,
        any stored tilt in range), any symmetry image of it, read without interpolation.
        Otherwise a training thickness and tilt.
        """
        k = int(rng.integers(len(self.libraries)))
        lib = self.libraries[k]
        train_idx, held_idx = self.splits[k]
        i = int(rng.choice(held_idx if heldout else train_idx))
        if exact_tilts:
            pool = sorted(self.heldout_tilts) or self._stored_tilts(k)
            w = pool[int(rng.integers(len(pool)))]
            ops = group_ops(lib.symmetry)
            tilt = map_tilt(ops[int(rng.integers(len(ops)))], w)
            p, mag = lib.pattern_by_index(i, tilt), math.hypot(*tilt)
        else:
            tilt, mag = self._training_tilt(k, rng)
            p = pattern_at_tilt(lib, i, tilt, interpolate=self.augment.interpolate)
        p, scale = self._augment(p, rng)
        labels = {
            "thickness_nm": float(lib.thickness_a[i]) / 10,
            "mistilt_mrad": mag,
            "scale": scale,
            "conv_angle": lib.conv_angle_mrad,
            "tilt": tilt,
            "library": k,
        }
        return p, labels

    def preprocess(self, p: np.ndarray, k: int, scale: float, rng: np.random.Generator):
        """The network's input from a raw pattern: with the measured disc radius (what the
        analyzer's first pass sees) for `measured_fraction` of draws, else with the true
        radius off by up to ±radius_jitter (what its second pass sees after the scale head's
        correction). Returns (pattern, log of the radius error)."""
        true_radius = scale * self.libraries[k].disc_radius_px
        if rng.random() < self.measured_fraction:
            pre = preprocess_pattern(p, self.config)
        else:
            jitter = float(rng.uniform(-self.radius_jitter, self.radius_jitter))
            pre = preprocess_pattern(p, self.config, radius_px=true_radius * math.exp(jitter))
        return pre.pattern, math.log(pre.radius_px / true_radius)

    def draw(
        self,
        rng: np.random.Generator,
        n: int,
        *,
        heldout: bool = False,
        exact_tilts: bool = False,
        preprocess: bool = True,
    ) -> Draw:
        """n patterns (preprocessed for the network, or raw for the analyzer)."""
        pats, rows = [], []
        while len(pats) < n:
            p, lab = self.raw(rng, heldout=heldout, exact_tilts=exact_tilts)
            log_s = 0.0
            if preprocess:
                try:
                    p, log_s = self.preprocess(p, lab["library"], lab["scale"], rng)
                except ValueError:  # a disc lost in noise: draw another
                    continue
            pats.append(p)
            rows.append((lab, log_s))
        same = len({q.shape for q in pats}) == 1
        return Draw(
            patterns=np.stack(pats).astype(np.float32) if same else pats,
            thickness_nm=np.array([r[0]["thickness_nm"] for r in rows], np.float32),
            mistilt_mrad=np.array([r[0]["mistilt_mrad"] for r in rows], np.float32),
            scale=np.array([r[0]["scale"] for r in rows], np.float32),
            log_scale=np.array([r[1] for r in rows], np.float32),
            conv_angle=np.array([r[0]["conv_angle"] for r in rows], np.float32),
            tilt=np.array([r[0]["tilt"] for r in rows], np.float32).reshape(-1, 2),
            library=np.array([r[0]["library"] for r in rows], np.int64),
        )
