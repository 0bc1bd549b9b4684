"""Preprocessing of a PACBED pattern before the networks see it (the seed's steps, made exact).

A measured pattern sits anywhere on the camera, at any camera length, on a dark-current and
diffuse background; the simulated library has the disc centred at a known mrad/px. Both go
through the same steps so they meet in one frame:

1. background: the mean of a border frame (the seed's 10 %), subtracted, negatives clipped;
2. centre: threshold (Otsu, as the seed) and the centroid of the largest bright region;
3. disc radius: the steepest fall of the azimuthal mean around the centre, searched near the
   radius of the thresholded area. The seed learnt the scale with a CNN; measuring the disc
   gives it directly, and radius / convergence angle is the camera's px per mrad;
4. square crop of `crop_radii` disc radii around the centre, resampled to `size` pixels, so
   the disc has the same radius in pixels whatever the camera length; scaled to max 1.

numpy and scipy only: this runs in the daemon's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

__all__ = [
    "PreprocessConfig",
    "PreprocessedPattern",
    "border_background",
    "find_centre",
    "measure_disc_radius",
    "otsu_threshold",
    "preprocess_pattern",
]


class PreprocessConfig(BaseModel):
    """How a pattern is normalised; a model is trained for one of these and keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(128, ge=8, le=2048, description="output side (px)")
    crop_radii: float = Field(2.0, gt=1, le=10, description="crop half-width in disc radii")
    border_fraction: float = Field(0.1, gt=0, lt=0.5, description="border frame for background")
    min_radius_px: float = Field(2.0, gt=0, description="a smaller disc is refused")


@dataclass(frozen=True)
class PreprocessedPattern:
    """The normalised pattern and what was measured on the input to make it."""

    pattern: np.ndarray  # (size, size) float32, max 1, disc radius output_radius_px
    centre_px: tuple[float, float]  # disc centre in input pixels (axis 0, axis 1)
    radius_px: float  # disc radius in input pixels
    background: float  # subtracted per-pixel level, input units
    output_radius_px: float

    @property
    def scale(self) -> float:
        """Input pixels per output pixel."""
        return self.radius_px / self.output_radius_px

    def mrad_per_px(self, conv_angle_mrad: float) -> float:
        """Camera calibration of the input that the disc implies (mrad per input pixel)."""
        return conv_angle_mrad / self.radius_px


def _check_image(image: object) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"image must be a 2-D array, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"image must hold real numbers, got dtype {a.dtype}")
    if min(a.shape) < 8:
        raise ValueError(f"image shape {a.shape} is too small: need at least 8 x 8 px")
    a = a.astype(np.float64)
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise ValueError(f"image has {bad} non-finite pixels (NaN or inf)")
    lo, hi = float(a.min()), float(a.max())
    if hi == 0 and lo == 0:
        raise ValueError("image is all zeros: no diffraction pattern in it")
    if hi == lo:
        raise ValueError(f"image is constant ({hi}): no disc to find")
    return a


def border_background(image: np.ndarray, border_fraction: float = 0.1) -> float:
    """Mean of the frame `border_fraction` of each side wide: far from the disc, diffuse only."""
    h, w = image.shape
    bh, bw = max(1, int(border_fraction * h)), max(1, int(border_fraction * w))
    inner = np.zeros(image.shape, bool)
    inner[bh : h - bh, bw : w - bw] = True
    return float(image[~inner].mean())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance) of a set of values."""
    v = np.asarray(values, float).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def find_centre(image: np.ndarray) -> tuple[tuple[float, float], float]:
    """Centroid and equivalent radius of the largest region above the Otsu threshold."""
    mask = image > otsu_threshold(image)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("no pixel lies above the threshold: no disc found")
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    region = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    rows, cols = np.nonzero(region)
    return (float(rows.mean()), float(cols.mean())), float(np.sqrt(region.sum() / np.pi))


def measure_disc_radius(
    image: np.ndarray, centre: tuple[float, float], guess: float, bin_px: float = 0.25
) -> float:
    """Radius of the steepest fall of the azimuthal mean, within 0.6-1.4x the guess.

    The bright-field disc is the one circle centred on the beam, so its edge survives the
    azimuthal average while the overlapping outer discs smear out.
    """
    yy, xx = np.indices(image.shape, dtype=float)
    r = np.hypot(yy - centre[0], xx - centre[1])
    r_max = 1.6 * guess
    keep = r < r_max
    idx = (r[keep] / bin_px).astype(int)
    total = np.bincount(idx, weights=image[keep])
    count = np.bincount(idx)
    valid = count > 0
    radii = (np.arange(len(total)) + 0.5) * bin_px
    profile = np.interp(radii, radii[valid], total[valid] / count[valid])
    profile = ndimage.gaussian_filter1d(profile, sigma=max(1.0, 0.5 / bin_px))
    slope = np.gradient(profile, bin_px)
    window = (radii >= 0.6 * guess) & (radii <= 1.4 * guess)
    if not window.any():
        raise ValueError(f"disc radius guess {guess:.2f} px is too small to measure")
    i = int(np.flatnonzero(window)[np.argmin(slope[window])])
    if 0 < i < len(slope) - 1:  # parabola through the minimum and its neighbours
        a, b, c = slope[i - 1], slope[i], slope[i + 1]
        denom = a - 2 * b + c
        return float(radii[i] + (0.5 * (a - c) / denom * bin_px if denom else 0.0))
    return float(radii[i])


def preprocess_pattern(
    image: object, config: PreprocessConfig | None = None, radius_px: float | None = None
) -> PreprocessedPattern:
    """Background, centre, disc radius, crop and resample a 2-D pattern (see module doc).

    radius_px skips the radius measurement when it is known (a simulated pattern: the
    convergence angle over the detector sampling).
    """
    cfg = config or PreprocessConfig()
    a = _check_image(image)
    background = border_background(a, cfg.border_fraction)
    a = np.clip(a - background, 0.0, None)
    if not a.any():
        raise ValueError(
            f"nothing lies above the border background ({background:g}): no disc found"
        )
    centre, area_radius = find_centre(a)
    radius = radius_px if radius_px is not None else measure_disc_radius(a, centre, area_radius)
    if not np.isfinite(radius) or radius < cfg.min_radius_px:
        raise ValueError(
            f"disc radius {radius:.2f} px is below min_radius_px = {cfg.min_radius_px}: "
            "the pattern is too small or has no disc"
        )
    out_radius = cfg.size / (2 * cfg.crop_radii)
    step = radius / out_radius  # input px per output px
    if step > 1:  # average before sampling so no detail aliases
        a = ndimage.gaussian_filter(a, 0.4 * step)
    offsets = (np.arange(cfg.size) - (cfg.size - 1) / 2) * step
    coords = np.stack(np.meshgrid(centre[0] + offsets, centre[1] + offsets, indexing="ij"))
    out = ndimage.map_coordinates(a, coords, order=1, mode="constant", cval=0.0)
    peak = float(out.max())
    if peak <= 0:
        raise ValueError("the crop around the disc is empty after background subtraction")
    return PreprocessedPattern(
        pattern=(out / peak).astype(np.float32),
        centre_px=centre,
        radius_px=float(radius),
        background=background,
        output_radius_px=out_radius,
    )
