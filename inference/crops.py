"""Classifier input: a fixed-size crop of the contrast image round a candidate.

Training and inference both make their crops here, so the network sees at run time exactly
the representation it learned on: per-channel contrast 1 - I/background (linear pixels,
so independent of exposure and illumination fall-off) over a square of fixed physical size,
area-resampled to the network's input size. Beyond the tile edge the crop is bare wafer (0).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["classifier_crop", "crop_contrast", "crop_window"]

CROP_BORDER_PX = 6  # ring of pixels taken as wafer round a crop centred on one object


def crop_window(
    centre_px: tuple[float, float], side_px: int, shape: tuple[int, int]
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Source window (r0, c0, r1, c1) clipped to `shape`, and its offset inside the crop."""
    half = side_px // 2
    r0 = round(centre_px[0]) - half
    c0 = round(centre_px[1]) - half
    r1, c1 = r0 + side_px, c0 + side_px
    src = (max(r0, 0), max(c0, 0), min(r1, shape[0]), min(c1, shape[1]))
    return src, (src[0] - r0, src[1] - c0)


def classifier_crop(
    contrast: np.ndarray,
    centre_px: tuple[float, float],
    pixel_size_um: float,
    crop_um: float,
    input_px: int,
) -> np.ndarray:
    """(3, input_px, input_px) float32 crop of a (h, w, c) contrast image round a point."""
    if contrast.ndim == 2:
        contrast = contrast[..., None]
    if contrast.shape[2] == 1:
        contrast = np.repeat(contrast, 3, axis=2)
    side = max(round(crop_um / pixel_size_um), 1)
    (r0, c0, r1, c1), (dr, dc) = crop_window(centre_px, side, contrast.shape[:2])
    window = np.zeros((side, side, 3), np.float32)
    if r1 > r0 and c1 > c0:
        window[dr : dr + r1 - r0, dc : dc + c1 - c0] = contrast[r0:r1, c0:c1, :3]
    if side == input_px:
        return np.ascontiguousarray(window.transpose(2, 0, 1))
    out = np.empty((3, input_px, input_px), np.float32)
    for ch in range(3):
        img = Image.fromarray(window[:, :, ch], mode="F")
        out[ch] = np.asarray(img.resize((input_px, input_px), Image.Resampling.BOX))
    return out


def border_colour(image: np.ndarray, ring: int = CROP_BORDER_PX) -> np.ndarray:
    """Per-channel median of the outer ring: the wafer round an object a crop centres on."""
    edge = np.ones(image.shape[:2], bool)
    edge[ring:-ring, ring:-ring] = False
    return np.median(image[edge].reshape(-1, image.shape[2]), axis=0)


def crop_contrast(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 contrast 1 - I/background of a linear crop centred on one object
    (a data set's crop, not a tile): the daemon's quadratic wafer fit, anchored on the
    crop's border colour, and the preselection's smoothing."""
    from .background import estimate_background
    from .config import PreselectionConfig
    from .preselection import contrast_image

    img = np.asarray(image, dtype=np.float32)
    bg = estimate_background(img, reference=border_colour(img))
    return contrast_image(img, bg, PreselectionConfig().smooth_sigma_px)
