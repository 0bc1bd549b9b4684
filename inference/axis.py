"""Crystal-axis angle (mod 30 deg) of a flake from its straight edges.

Hexagonal crystals cleave along zigzag and armchair directions, 30 deg apart, so the
directions of a flake's straight edges, taken mod 30 deg, cluster at its lattice axis. The
edge direction at each boundary pixel comes from the intensity gradient (its normal; 90 deg
is 0 mod 30, so normal and edge agree). Angles are mapped onto a circle by 12 theta (a
30-deg period), where straight edges pile up and torn ones spread out. The peak of the
gradient-weighted histogram is refined by mean-shift with a von Mises kernel (about 3 deg),
which finds the centre of the straight edges' cluster without binning bias. The confidence
is the share of edge weight within `window_deg` of it. The axis CNN of #4 supersedes this.

Angles are in stage coordinates: from +x towards +y (image columns and rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .crops import CROP_BORDER_PX, crop_contrast

__all__ = ["AxisEstimate", "estimate_axis", "estimate_axis_of_crop"]

_BINS = 360  # over the 12-theta circle: 1/12 deg of axis angle per bin


@dataclass(frozen=True)
class AxisEstimate:
    angle_deg: float  # in [0, modulus)
    confidence: float  # share of edge weight within `window_deg` of the peak
    n_edge_px: int


def estimate_axis(
    signal: np.ndarray,
    region: np.ndarray,
    *,
    modulus_deg: float = 30.0,
    window_deg: float = 2.0,
    gradient_sigma_px: float = 2.0,
) -> AxisEstimate | None:
    """Axis angle of the flake `region` (bool mask) in `signal` (2-D contrast image).

    Both arrays cover the same window (a crop round the flake with a margin). Returns None
    when the region has too little edge to measure.
    """
    # Derivative-of-Gaussian gradients: isotropic, so a staircase on the pixel grid does not
    # pull edge angles towards 0 and 45 deg as Sobel on a sharp edge does (2 deg error).
    sig = signal.astype(np.float32)
    gx = ndimage.gaussian_filter(sig, gradient_sigma_px, order=(0, 1))
    gy = ndimage.gaussian_filter(sig, gradient_sigma_px, order=(1, 0))
    mag2 = gx * gx + gy * gy
    boundary = region ^ ndimage.binary_erosion(region, iterations=2)
    boundary |= ndimage.binary_dilation(region, iterations=2) & ~region
    # Edge pixels: on the region's boundary and with a clear gradient.
    weights = np.where(boundary, mag2, 0.0)
    if not weights.any():
        return None
    strong = weights > 0.1 * weights.max()
    n_edge = int(strong.sum())
    if n_edge < 12:
        return None
    theta = np.arctan2(gy[strong], gx[strong])  # gradient (edge normal) direction
    w = weights[strong]
    k = 360.0 / modulus_deg
    phase = (k * theta) % (2 * np.pi)
    # Start at the peak of the weighted histogram (robust to torn edges)...
    bins = (phase / (2 * np.pi) * _BINS).astype(int) % _BINS
    hist = np.bincount(bins, weights=w, minlength=_BINS)
    sigma_bins = 2.0 * k * _BINS / 360.0
    peak = int(np.argmax(ndimage.gaussian_filter1d(hist, sigma_bins, mode="wrap"))) + 0.5
    mode = peak / _BINS * 2 * np.pi
    # ...then mean-shift with a von Mises kernel of about 3 deg of axis angle: converges to
    # the centre of the straight edges' cluster without the histogram's binning bias.
    kappa = 1.0 / np.radians(3.0 * k) ** 2
    for _ in range(8):
        kern = w * np.exp(kappa * (np.cos(phase - mode) - 1.0))
        mode = float(np.angle(np.sum(kern * np.exp(1j * phase)))) % (2 * np.pi)
    angle = np.degrees(mode) / k % modulus_deg
    near = np.abs((phase - mode + np.pi) % (2 * np.pi) - np.pi) <= np.radians(window_deg * k)
    confidence = float(w[near].sum() / w.sum())
    return AxisEstimate(angle_deg=float(angle), confidence=confidence, n_edge_px=n_edge)


def estimate_axis_of_crop(image: np.ndarray, modulus_deg: float = 30.0) -> AxisEstimate | None:
    """The straight-edge estimate for a crop centred on one crystal (an AxisID image).

    Fed as the tile pipeline feeds `estimate_axis`: contrast against the fitted wafer
    (anchored on the crop's border), the crystal's mask, and the contrast projected on the
    crystal's own colour (any material, thin or thick). The crystal is the largest region
    clearly off the wafer colour, holes filled: terraces inside it are not its outline. This
    is the baseline every axis model is measured against.
    """
    contrast = crop_contrast(image)
    mag = np.linalg.norm(contrast, axis=2)
    edge = np.ones(mag.shape, bool)
    edge[CROP_BORDER_PX:-CROP_BORDER_PX, CROP_BORDER_PX:-CROP_BORDER_PX] = False
    noise = 1.4826 * float(np.median(np.abs(mag[edge] - np.median(mag[edge]))))
    inside = mag > max(0.02, float(np.median(mag[edge])) + 5 * noise)
    inside = ndimage.binary_opening(inside, iterations=2)
    labels, n = ndimage.label(inside)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    region = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    interior = ndimage.binary_erosion(region, iterations=2)
    direction = np.median(contrast[interior if interior.sum() >= 8 else region], axis=0)
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return None
    return estimate_axis(contrast @ (direction / norm), region, modulus_deg=modulus_deg)
