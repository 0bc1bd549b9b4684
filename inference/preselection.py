"""Hand-coded preselection: regions whose colour contrast against the wafer looks like a thin flake.

This is the cheap first stage of the seed's flake hunter: per-channel contrast against a
fitted background, a window per channel, a morphological opening against noise and thin
rings round thick crystals, connected components, and a minimum area in um2. Each surviving
region is a `Candidate` for the CNN, with its median contrast and the GrapheneClassifier
contrast bin (R <= 12 %, 12-19 %, 19-30 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flakescan.simulators.optics import contrast_class

from .background import Background, estimate_background
from .config import PreselectionConfig

__all__ = ["Candidate", "PreselectionResult", "contrast_class", "disk", "preselect"]


@dataclass(frozen=True)
class Candidate:
    """A connected region that passed the colour window, in tile pixels."""

    bbox_px: tuple[int, int, int, int]  # row0, col0, row1, col1 (exclusive)
    centroid_px: tuple[float, float]  # row, col
    area_px: int
    area_um2: float
    contrast: tuple[float, ...]  # median contrast per channel (R, G, B)
    contrast_class: int  # 1-3 by the R-contrast bins, 0 outside them
    touches_border: bool
    mask: np.ndarray  # bool, the region inside bbox_px


@dataclass(frozen=True)
class PreselectionResult:
    """Candidates of one tile plus what later stages reuse (background, contrast image)."""

    candidates: list[Candidate]
    background: Background
    contrast: np.ndarray | None  # (h, w, c) float32 smoothed contrast; None if skipped
    skipped_reason: str | None = None


def disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx**2 + yy**2 <= radius**2 + 0.5


def contrast_image(image: np.ndarray, background: Background, smooth_sigma_px: float) -> np.ndarray:
    """(h, w, c) float32 contrast 1 - I / background, lightly smoothed against noise."""
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if smooth_sigma_px > 0:
        img = ndimage.gaussian_filter(img, sigma=(smooth_sigma_px, smooth_sigma_px, 0))
    bg = background.evaluate()
    np.maximum(bg, 1e-3, out=bg)
    return 1.0 - img / bg


def _interior_median(contrast: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Median contrast of a region's interior: edge pixels mix flake and wafer."""
    interior = ndimage.binary_erosion(region, iterations=2)
    use = interior if interior.sum() >= 8 else region
    return np.median(contrast[use], axis=0)


def _union_slice(slices: list[tuple[slice, slice]]) -> tuple[slice, slice]:
    return (
        slice(min(s[0].start for s in slices), max(s[0].stop for s in slices)),
        slice(min(s[1].start for s in slices), max(s[1].stop for s in slices)),
    )


def _group_components(
    labels: np.ndarray,
    n: int,
    inside: np.ndarray,
    contrast: np.ndarray,
    cfg: PreselectionConfig,
    pixel_size_um: float,
) -> list[list[tuple[tuple[slice, slice], int]]]:
    """Components of one contrast class closer than `merge_gap_um` are one flake: a thin
    flake cut in two by a speck of dust, or wrapped round a thick crystal, is still one flake
    to look at. Components outside the class bins are never merged (crowded thick debris
    would fuse into blobs)."""
    comps = [
        (
            sl,
            k,
            contrast_class(
                float(_interior_median(contrast[sl], labels[sl] == k)[0]), cfg.class_bins
            ),
        )
        for k, sl in enumerate(ndimage.find_objects(labels), start=1)
        if sl is not None
    ]
    radius = int(np.ceil(cfg.merge_gap_um / pixel_size_um / 2))
    if radius == 0 or len(comps) < 2:
        return [[(sl, k)] for sl, k, _ in comps]
    near, _ = ndimage.label(ndimage.binary_dilation(inside, structure=disk(radius)))
    groups: dict[tuple[int, int], list[tuple[tuple[slice, slice], int]]] = {}
    for sl, k, cls in comps:
        rr, cc = np.nonzero(labels[sl] == k)
        key = (int(near[sl][rr[0], cc[0]]), cls) if cls > 0 else (-k, 0)
        groups.setdefault(key, []).append((sl, k))
    return list(groups.values())


def preselect(
    image: np.ndarray,
    pixel_size_um: float,
    cfg: PreselectionConfig,
    wafer_colour: np.ndarray | None = None,
) -> PreselectionResult:
    """Find flake-coloured regions in a linear (h, w, 3) or mono (h, w) tile.

    `wafer_colour`, the background seen on earlier tiles of the chip, anchors the
    background fit where the tile itself is mostly something else (the chip edge).
    """
    background = estimate_background(image, reference=wafer_colour)
    if background.fraction < cfg.min_background_fraction:
        return PreselectionResult(
            [],
            background,
            None,
            skipped_reason=f"only {background.fraction:.0%} of the tile looks like bare wafer",
        )
    contrast = contrast_image(image, background, cfg.smooth_sigma_px)
    n_ch = contrast.shape[2]
    lo = np.asarray(cfg.contrast_min[:n_ch], dtype=np.float32)
    hi = np.asarray(cfg.contrast_max[:n_ch], dtype=np.float32)
    inside = np.logical_and(contrast >= lo, contrast <= hi).all(axis=2)
    if cfg.opening_radius_px > 0:
        inside = ndimage.binary_opening(inside, structure=disk(cfg.opening_radius_px))
    labels, n = ndimage.label(inside, structure=np.ones((3, 3), bool))
    if n == 0:
        return PreselectionResult([], background, contrast)
    groups = _group_components(labels, n, inside, contrast, cfg, pixel_size_um)
    px_area = pixel_size_um**2
    min_px = cfg.min_area_um2 / px_area
    h, w = labels.shape
    candidates: list[Candidate] = []
    for members in groups:
        sl = _union_slice([m[0] for m in members])
        region = np.isin(labels[sl], [m[1] for m in members])
        area = int(region.sum())
        if area < min_px:
            continue
        rr, cc = np.nonzero(region)
        med = _interior_median(contrast[sl], region)
        r0, c0, r1, c1 = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
        candidates.append(
            Candidate(
                bbox_px=(r0, c0, r1, c1),
                centroid_px=(float(rr.mean() + r0), float(cc.mean() + c0)),
                area_px=area,
                area_um2=float(area * px_area),
                contrast=tuple(float(x) for x in med),
                contrast_class=contrast_class(float(med[0]), cfg.class_bins),
                touches_border=r0 == 0 or c0 == 0 or r1 == h or c1 == w,
                mask=region,
            )
        )
    return PreselectionResult(candidates, background, contrast)
