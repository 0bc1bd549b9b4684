"""Training-time augmentation of library patterns, so a network meets what a microscope gives.

The library is clean and sparse: one wedge of tilts on a 1 mrad grid, exact detector
geometry, no noise. Each helper below adds one thing a measured pattern has and the
library lacks; `draw_training_pattern` chains them in the order the microscope applies
them. All work on (n, n) float arrays in the library's frame (pacbed_symmetry.py) and keep
the shape, with k = 0 at the centre pixel.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from .pacbed_library import PacbedLibrary

__all__ = [
    "AugmentSpec",
    "apply_microscope",
    "blur",
    "draw_training_pattern",
    "pattern_at_tilt",
    "poisson_noise",
    "random_tilt",
    "transform",
]


def random_tilt(rng: np.random.Generator, max_mrad: float) -> tuple[float, float, float, float]:
    """(mx, my, magnitude, azimuth_deg): magnitude uniform in [0, max], azimuth uniform.

    Uniform in magnitude rather than in area so every mistilt class the network predicts is
    seen equally often; any azimuth is reachable from the wedge through the symmetry.
    """
    magnitude = float(rng.uniform(0.0, max_mrad))
    azimuth = float(rng.uniform(0.0, 360.0))
    a = math.radians(azimuth)
    return magnitude * math.cos(a), magnitude * math.sin(a), magnitude, azimuth


def pattern_at_tilt(
    lib: PacbedLibrary, thickness_index: int, tilt, interpolate: bool = True
) -> np.ndarray:
    """The pattern at any tilt inside the library's range, through its symmetry.

    Without interpolation the nearest grid tilt is used, so labels stay on the grid. With it,
    the four grid tilts around the request are blended bilinearly: a crude model (features
    move rather than fade with tilt) that is fair at a 1 mrad grid, where neighbours differ
    little, and it keeps a regressor from learning only the grid values.
    """
    step = lib.spec.tilt_step_mrad
    u = np.asarray(tilt, float) / step
    if not interpolate:
        q = np.round(u) * step
        return lib.pattern_by_index(thickness_index, (q[0] + 0.0, q[1] + 0.0))
    base = np.floor(u)
    frac = u - base
    out = None
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        w = (frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
        if w < 1e-9:
            continue
        q = ((base[0] + dx) * step + 0.0, (base[1] + dy) * step + 0.0)
        p = w * lib.pattern_by_index(thickness_index, q)
        out = p if out is None else out + p
    assert out is not None
    return out


def transform(
    pattern: np.ndarray,
    scale: float = 1.0,
    rotation_deg: float = 0.0,
    shift_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """One bilinear resampling for camera length, detector rotation and centre offset.

    scale > 1 magnifies (a longer camera length: the disc covers more pixels); the seed's
    scale CNN and our disc-radius normalisation both leave a residual scale error that the
    network must tolerate. The detector's rotation relative to the crystal is arbitrary in
    a microscope. The offset models the centring error of preprocessing. Zero fills outside.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    n0, n1 = pattern.shape
    c = np.array([(n0 - 1) / 2, (n1 - 1) / 2])
    a = math.radians(rotation_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    inverse = rot.T / scale  # output -> input coordinates
    offset = c - inverse @ (c + np.asarray(shift_px, float))
    return ndimage.affine_transform(
        pattern, inverse, offset=offset, order=1, mode="constant", cval=0.0
    )


def blur(pattern: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian detector point-spread (scintillator and fibre optics smear a few pixels)."""
    return pattern if sigma_px <= 0 else ndimage.gaussian_filter(pattern, sigma_px)


def poisson_noise(pattern: np.ndarray, dose: float, rng: np.random.Generator) -> np.ndarray:
    """Counts for `dose` electrons in the whole pattern: shot noise of a real exposure."""
    total = float(pattern.sum())
    if total <= 0 or dose <= 0:
        raise ValueError(f"need a positive pattern sum and dose, got {total} and {dose}")
    return rng.poisson(pattern * (dose / total)).astype(np.float32)


class AugmentSpec(BaseModel):
    """Ranges the augmentations are drawn from (uniform; dose log-uniform)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tilt_mrad: float = Field(10.0, ge=0)
    interpolate: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: bool = True
    max_shift_px: float = Field(1.0, ge=0)
    blur_px: tuple[float, float] = (0.0, 1.5)
    dose: tuple[float, float] | None = (1e5, 1e8)  # electrons per pattern; None: no noise


def apply_microscope(
    pattern: np.ndarray, rng: np.random.Generator, spec: AugmentSpec
) -> tuple[np.ndarray, float, float]:
    """What the microscope adds to a library pattern, drawn from `spec` in its order: camera
    length, detector rotation and centre offset, blur, shot noise; normalised to max 1.
    Returns (float32 pattern, scale, rotation in deg)."""
    scale = float(rng.uniform(*spec.scale))
    rotation = float(rng.uniform(0.0, 360.0)) if spec.rotate else 0.0
    shift = rng.uniform(-spec.max_shift_px, spec.max_shift_px, size=2)
    p = transform(pattern, scale, rotation, (float(shift[0]), float(shift[1])))
    p = blur(p, float(rng.uniform(*spec.blur_px)))
    if spec.dose is not None:
        lo, hi = np.log(spec.dose[0]), np.log(spec.dose[1])
        p = poisson_noise(np.clip(p, 0, None), float(np.exp(rng.uniform(lo, hi))), rng)
    return (p / max(float(p.max()), 1e-12)).astype(np.float32), scale, rotation


def draw_training_pattern(
    lib: PacbedLibrary, rng: np.random.Generator, spec: AugmentSpec | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """A random augmented pattern (max 1) and its labels, in the microscope's order.

    Labels: thickness (Å), mistilt (mrad), azimuth (deg, in the detector frame: the crystal
    azimuth plus the rotation), scale, conv_angle (mrad).
    """
    spec = spec or AugmentSpec()
    max_tilt = min(spec.max_tilt_mrad, lib.spec.tilt_max_mrad)
    i = int(rng.integers(len(lib.thickness_a)))
    mx, my, magnitude, azimuth = random_tilt(rng, max_tilt)
    p = pattern_at_tilt(lib, i, (mx, my), interpolate=spec.interpolate)
    if not spec.interpolate:
        step = lib.spec.tilt_step_mrad
        mx, my = round(mx / step) * step, round(my / step) * step
        magnitude = math.hypot(mx, my)
        azimuth = math.degrees(math.atan2(my, mx)) % 360.0
    p, scale, rotation = apply_microscope(p, rng, spec)
    labels = {
        "thickness": float(lib.thickness_a[i]),
        "mistilt": magnitude,
        "azimuth": (azimuth + rotation) % 360.0,
        "scale": scale,
        "conv_angle": lib.conv_angle_mrad,
    }
    return p, labels
