"""Where the chip is: its outline found in low-magnification frames of the holder.

A chip is rarely a clean rectangle where the scan expects it: wafers cleave into odd
shapes, corners break off, and the chip sits wherever it was put on the tape or holder.
From a few frames at the lowest magnification this module finds the chip's true outline, so
that the scan covers the chip and nothing beside it.

The frames are stitched at a coarse scale; each pixel is described by its log brightness
and chromaticity, and split into two colour clusters (k-means): the SiO2 wafer and what
surrounds it (anodised holder, blue tape). The search area reaches beyond the chip, so the
chip's cluster is the one that holds less of the area's border; its mask is closed and its holes
filled (crystals, dust and flakes on the chip are part of it), and the largest piece is
the chip. The outline is that piece's boundary in stage micrometres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.measure import find_contours

from flakescan.hardware.frame import Frame

from .preselection import disk

__all__ = ["ChipOutline", "find_chip_outline", "stitch_frames"]


@dataclass(frozen=True)
class ChipOutline:
    vertices_um: list[tuple[float, float]]
    area_mm2: float
    bbox_um: tuple[float, float, float, float]  # x0, y0, x1, y1
    um_per_px: float
    mosaic: np.ndarray  # (h, w, 3) float32 linear, the stitched search area
    mask: np.ndarray  # bool, the chip in the mosaic
    origin_um: tuple[float, float]  # stage position of the mosaic's top-left corner

    def polygon(self) -> Polygon:
        return Polygon(self.vertices_um)

    def describe(self) -> dict:
        return {
            "vertices_um": [[round(x, 1), round(y, 1)] for x, y in self.vertices_um],
            "area_mm2": round(self.area_mm2, 4),
            "bbox_um": [round(v, 1) for v in self.bbox_um],
            "um_per_px": self.um_per_px,
        }


def stitch_frames(
    frames: Sequence[Frame], um_per_px: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Frames (linear) block-averaged to `um_per_px` and placed by their stage positions;
    returns the mosaic and its top-left corner in stage um. Unimaged pixels are NaN."""
    if not frames:
        raise ValueError("stitch_frames: no frames")
    boxes = []
    for f in frames:
        h, w = f.shape
        half_w, half_h = w * f.pixel_size_um / 2, h * f.pixel_size_um / 2
        boxes.append((f.x_um - half_w, f.y_um - half_h, f.x_um + half_w, f.y_um + half_h))
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    shape = (int(np.ceil((y1 - y0) / um_per_px)), int(np.ceil((x1 - x0) / um_per_px)))
    mosaic = np.full((*shape, 3), np.nan, np.float32)
    for f, (bx0, by0, _, _) in zip(frames, boxes, strict=True):
        factor = max(1, round(um_per_px / f.pixel_size_um))
        img = f.linear_image()[..., :3]
        h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
        small = img[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))
        scale = factor * f.pixel_size_um / um_per_px
        if abs(scale - 1) > 1e-3:
            zoom = (scale, scale, 1)
            small = ndimage.zoom(small, zoom, order=1)
        top, left = round((by0 - y0) / um_per_px), round((bx0 - x0) / um_per_px)
        bottom, right = min(top + small.shape[0], shape[0]), min(left + small.shape[1], shape[1])
        mosaic[top:bottom, left:right] = small[: bottom - top, : right - left]
    return mosaic, (x0, y0)


def _features(mosaic: np.ndarray) -> np.ndarray:
    total = np.clip(mosaic.sum(axis=-1), 1e-6, None)
    chroma = mosaic[..., [0, 2]] / total[..., None]
    return np.concatenate([np.log(total)[..., None], chroma], axis=-1)


def _two_clusters(x: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Labels 0/1 of a two-means clustering of rows of x (standardised columns)."""
    z = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)
    # Start from the two ends of the first principal direction (the means of its lowest
    # and highest fifths, so that a few odd pixels cannot seed a cluster): no random seeds.
    _, _, vt = np.linalg.svd(z[:: max(1, len(z) // 20000)], full_matrices=False)
    proj = z @ vt[0]
    lo, hi = np.quantile(proj, [0.2, 0.8])
    centres = np.stack([z[proj <= lo].mean(axis=0), z[proj >= hi].mean(axis=0)])
    labels = np.zeros(len(z), np.int8)
    for _ in range(iterations):
        d = ((z[:, None, :] - centres[None]) ** 2).sum(axis=-1)
        new = np.argmin(d, axis=1).astype(np.int8)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for k in (0, 1):
            if np.any(labels == k):
                centres[k] = z[labels == k].mean(axis=0)
    return labels


def find_chip_outline(
    frames: Sequence[Frame],
    um_per_px: float = 10.0,
    closing_um: float = 60.0,
    simplify_um: float = 10.0,
) -> ChipOutline:
    """The chip in low-magnification frames of the search area; ValueError if none."""
    mosaic, origin = stitch_frames(frames, um_per_px)
    valid = np.all(np.isfinite(mosaic), axis=-1)
    if valid.sum() < 100:
        raise ValueError("find_chip_outline: too few imaged pixels to find a chip")
    feats = _features(np.where(valid[..., None], mosaic, 1.0))
    labels = np.full(valid.shape, -1, np.int8)
    labels[valid] = _two_clusters(feats[valid])
    # The search area reaches beyond the chip, so its border is mostly surround: the chip
    # is the cluster that holds less of the border.
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border = border[border >= 0].astype(np.int64)
    chip_label = int(np.bincount(border, minlength=2).argmin())
    mask = labels == chip_label
    radius = max(1, round(closing_um / um_per_px / 2))
    footprint = disk(radius)
    mask = ndimage.binary_closing(mask, structure=footprint, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=footprint)
    parts, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("find_chip_outline: no chip in the search area")
    sizes = ndimage.sum(mask, parts, index=np.arange(1, n + 1))
    mask = parts == 1 + int(np.argmax(sizes))
    if mask.mean() > 0.97:
        raise ValueError(
            "find_chip_outline: the chip fills the whole search area; search a larger area "
            "so that its edge is in view"
        )
    contour = max(find_contours(np.pad(mask.astype(np.float32), 1), 0.5), key=len) - 1.0
    poly = Polygon(
        [(origin[0] + (c + 0.5) * um_per_px, origin[1] + (r + 0.5) * um_per_px) for r, c in contour]
    ).simplify(simplify_um, preserve_topology=True)
    if not poly.is_valid:
        poly = poly.buffer(0)
    vertices = [(float(x), float(y)) for x, y in list(poly.exterior.coords)[:-1]]
    return ChipOutline(
        vertices_um=vertices,
        area_mm2=float(poly.area) / 1e6,
        bbox_um=tuple(float(v) for v in poly.bounds),  # type: ignore[arg-type]
        um_per_px=um_per_px,
        mosaic=mosaic,
        mask=mask,
        origin_um=origin,
    )
