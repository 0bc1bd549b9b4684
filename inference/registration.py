"""Where a high-magnification image lies in a low-magnification one: image registration
for re-centring on a flake after an objective change.

The high-magnification frame is binned down to the low one's pixel size and located by
phase correlation (scikit-image, sub-pixel) in the centre of the low-magnification frame.
The shift returned is where the high-magnification view's centre lies, in stage
micrometres, relative to the low-magnification view's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from flakescan.hardware.frame import Frame

__all__ = ["Registration", "locate"]

_DETAIL_SIGMA_PX = 6.0  # of the low-magnification frame: structure finer than ~12 px


@dataclass(frozen=True)
class Registration:
    dx_um: float
    dy_um: float
    error: float  # skimage's translation-invariant normalised RMS error, 0 (perfect) to 1
    correlation: float  # Pearson's r of the two views aligned by the shift: the match's worth

    def as_dict(self) -> dict:
        return {
            "dx_um": round(self.dx_um, 3),
            "dy_um": round(self.dy_um, 3),
            "error": round(self.error, 4),
            "correlation": round(self.correlation, 4),
        }


def _luminance(frame: Frame) -> np.ndarray:
    x = frame.linear_image().astype(np.float32)
    return x[..., :3].sum(axis=-1) if x.ndim == 3 else x


def _detail(x: np.ndarray, sigma: float) -> np.ndarray:
    """Relative contrast against the local mean: each objective's own illumination
    fall-off (and exposure) taken out, so that only the chip's structure is matched."""
    background = ndimage.gaussian_filter(x, sigma, mode="nearest")
    return x / np.maximum(background, 1e-6) - 1.0


def locate(high: Frame, low: Frame) -> Registration:
    """Where `high`'s centre lies relative to `low`'s centre (um, stage axes)."""
    if high.pixel_size_um >= low.pixel_size_um:
        raise ValueError(
            f"locate: the high-magnification frame ({high.pixel_size_um} um/px) must have "
            f"smaller pixels than the low one ({low.pixel_size_um} um/px)"
        )
    hi = _luminance(high)
    scale = high.pixel_size_um / low.pixel_size_um
    size = (max(8, round(hi.shape[1] * scale)), max(8, round(hi.shape[0] * scale)))
    small = np.asarray(Image.fromarray(hi).resize(size, Image.Resampling.BOX), np.float32)
    lo = _luminance(low)
    h, w = small.shape
    r0, c0 = (lo.shape[0] - h) // 2, (lo.shape[1] - w) // 2
    if r0 < 0 or c0 < 0:
        raise ValueError("locate: the high-magnification field is larger than the low one")
    ref = _detail(lo, _DETAIL_SIGMA_PX)[r0 : r0 + h, c0 : c0 + w]
    small = _detail(small, _DETAIL_SIGMA_PX)
    # shift = how far `small` must move to match `ref`: the high view's content lies
    # `shift` low pixels beyond the crop's.
    shift, error, _ = phase_cross_correlation(ref, small, upsample_factor=20, normalization=None)
    # Both crops centred the same way: offset of centres, plus the crop's own rounding.
    crop_centre_r = r0 + (h - 1) / 2 - (lo.shape[0] - 1) / 2
    crop_centre_c = c0 + (w - 1) / 2 - (lo.shape[1] - 1) / 2
    dr = crop_centre_r + shift[0]
    dc = crop_centre_c + shift[1]
    aligned = ndimage.shift(small, shift, order=1, mode="nearest")
    m = 2 + int(np.ceil(np.abs(shift).max()))  # leave out what the shift brought in
    a, b = ref[m:-m, m:-m].ravel(), aligned[m:-m, m:-m].ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.size > 16 and a.std() > 0 and b.std() > 0 else 0.0
    return Registration(
        dx_um=float(dc * low.pixel_size_um),
        dy_um=float(dr * low.pixel_size_um),
        error=float(error),
        correlation=corr,
    )
