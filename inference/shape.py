"""A flake's outline and the shape figures device makers choose flakes by.

Area alone does not say whether a Hall bar fits: a long thin sliver and a round flake of the
same area are different flakes to a lab. Each hit therefore carries its outline (a polygon
in stage micrometres, simplified to a third of a pixel) and figures read off it:

* `length_um`, `width_um`, `aspect_ratio`: the sides of the minimum-area bounding rectangle;
* `inscribed_diameter_um`: the largest circle inside the flake (the widest round spot);
* `rect_length_um`, `rect_width_um`, `rect_angle_deg`: the largest rectangle inside the
  flake, searched over orientations every 15 deg and along the bounding rectangle, the
  region a device can actually be patterned on.

Everything is computed from the polygon, so two cut views of one flake (merged by the
daemon) are measured again from the union of their outlines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon
from skimage.draw import polygon as raster_polygon
from skimage.measure import find_contours

__all__ = [
    "Outline",
    "ShapeMetrics",
    "measure_shape",
    "outline_area",
    "outline_from_mask",
    "outline_polygon",
    "outline_union",
]

Outline = tuple[tuple[float, float], ...]  # (x_um, y_um) vertices, not closed
_SEARCH_ANGLES_DEG = tuple(range(0, 90, 15))
_RASTER_CELLS = 128  # the long side of the raster the rectangle search runs on


@dataclass(frozen=True)
class ShapeMetrics:
    perimeter_um: float
    length_um: float
    width_um: float
    aspect_ratio: float  # length / width, >= 1
    inscribed_diameter_um: float
    rect_length_um: float
    rect_width_um: float
    rect_angle_deg: float  # direction of rect_length, from +x towards +y, in [0, 180)

    def as_columns(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


def outline_from_mask(
    mask: np.ndarray,
    to_stage: Callable[[float, float], tuple[float, float]],
    tolerance_px: float = 0.3,
) -> Outline:
    """The outer boundary of a boolean region as stage vertices.

    `to_stage(row, col)` maps the mask's pixel coordinates to stage micrometres. The
    boundary runs along pixel edges' midpoints (marching squares at 0.5) and is simplified
    to `tolerance_px`; holes are left out: an outline is where the flake ends.
    """
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        raise ValueError("outline_from_mask: the mask is empty")
    ring = max(contours, key=len) - 1.0  # undo the padding
    poly = Polygon(ring[:, ::-1])  # (col, row) = (x, y)
    poly = poly.simplify(tolerance_px, preserve_topology=True)
    if not isinstance(poly, Polygon) or poly.is_empty or len(poly.exterior.coords) < 4:
        rows, cols = ring[:, 0], ring[:, 1]
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        poly = Polygon([(c0, r0), (c1, r0), (c1, r1), (c0, r1)])
    coords = list(poly.exterior.coords)[:-1]
    return tuple((round(x, 3), round(y, 3)) for x, y in (to_stage(row, col) for col, row in coords))


def outline_polygon(outline: Outline) -> Polygon:
    poly = Polygon(outline)
    return poly if poly.is_valid else shapely.make_valid(poly).buffer(0)


def outline_area(outline: Outline) -> float:
    return float(outline_polygon(outline).area)


def outline_union(a: Outline, b: Outline) -> Outline:
    """One outline for two views of a flake (the larger piece where they do not touch)."""
    merged = outline_polygon(a).union(outline_polygon(b))
    if isinstance(merged, MultiPolygon):
        merged = max(merged.geoms, key=lambda g: g.area)
    merged = merged.simplify(0.1, preserve_topology=True)
    return tuple((round(x, 3), round(y, 3)) for x, y in list(merged.exterior.coords)[:-1])


def _largest_rectangle(cells: np.ndarray) -> tuple[int, int]:
    """(height, width) in cells of the largest all-True rectangle.

    For each top row, the rows below are ANDed downwards; the longest run of True in each
    ANDed row is the widest rectangle from that top to that bottom. O(h^2 w), in numpy.
    """
    transposed = cells.shape[0] > cells.shape[1]
    grid = cells.T if transposed else cells  # loop over the shorter side
    h, w = grid.shape
    cols = np.arange(w)
    best, best_hw = 0, (0, 0)
    for top in range(h):
        if (h - top) * w <= best:
            break  # no rectangle from here down can be larger
        band = np.logical_and.accumulate(grid[top:], axis=0)
        last_false = np.maximum.accumulate(np.where(band, -1, cols), axis=1)
        runs = (cols - last_false).max(axis=1)  # longest run per bottom row
        heights = np.arange(1, h - top + 1)
        k = int(np.argmax(runs * heights))
        if runs[k] * heights[k] > best:
            best, best_hw = int(runs[k] * heights[k]), (int(heights[k]), int(runs[k]))
    return best_hw[::-1] if transposed else best_hw


def _inscribed_rectangle(
    poly: Polygon, angles_deg: Sequence[float], min_step_um: float
) -> tuple[float, float, float]:
    """(long side, short side, direction of the long side) of the largest rectangle found."""
    best = (0.0, 0.0, 0.0)
    for angle in angles_deg:
        rotated = affinity.rotate(poly, -angle, origin=(0, 0))
        x0, y0, x1, y1 = rotated.bounds
        step = max(max(x1 - x0, y1 - y0) / _RASTER_CELLS, min_step_um)
        if step <= 0:
            continue
        # Shrunk by half a cell diagonal: a cell whose centre is inside lies wholly inside,
        # so the rectangle found fits in the flake (a device must). The shrunk outline is
        # simplified (few vertices rasterise fast), its tolerance taken off beforehand.
        inner = rotated.buffer(-step * (1 / math.sqrt(2.0) + 0.25), join_style="mitre")
        inner = inner.simplify(step * 0.25, preserve_topology=True)
        if isinstance(inner, MultiPolygon):
            inner = max(inner.geoms, key=lambda g: g.area)
        if inner.is_empty:
            continue
        xy = np.asarray(inner.exterior.coords)
        shape = (math.ceil((y1 - y0) / step) + 1, math.ceil((x1 - x0) / step) + 1)
        # A cell is inside when its centre is: rows from y, columns from x.
        rr, cc = raster_polygon(
            (xy[:, 1] - y0) / step - 0.5, (xy[:, 0] - x0) / step - 0.5, shape=shape
        )
        cells = np.zeros(shape, bool)
        cells[rr, cc] = True
        h, w = _largest_rectangle(cells)
        if h * w * step * step > best[0] * best[1]:
            along_x = w >= h
            long_side, short_side = (w, h) if along_x else (h, w)
            direction = angle if along_x else angle + 90.0
            best = (long_side * step, short_side * step, direction % 180.0)
    return best


def measure_shape(outline: Outline, min_step_um: float = 0.0) -> ShapeMetrics:
    """The shape figures of an outline (stage micrometres).

    The rectangle search runs on a raster of 128 cells along the flake, or cells of
    `min_step_um` (half the camera pixel, from the pipeline) when those are coarser: finer
    than the image adds time, not truth.
    """
    poly = outline_polygon(outline)
    if poly.is_empty or poly.area <= 0:
        raise ValueError(f"measure_shape: degenerate outline of {len(outline)} vertices")
    box = poly.minimum_rotated_rectangle
    corners = np.asarray(box.exterior.coords)[:4]
    sides = np.hypot(*(np.roll(corners, -1, axis=0) - corners).T)
    length, width = float(sides.max()), float(sides.min())
    edge = corners[1] - corners[0] if sides[0] >= sides[1] else corners[2] - corners[1]
    box_angle = math.degrees(math.atan2(edge[1], edge[0])) % 180.0
    radius = shapely.maximum_inscribed_circle(poly, tolerance=max(width, 1e-6) / 200).length
    angles = sorted({*map(float, _SEARCH_ANGLES_DEG), box_angle % 90.0})
    rect_long, rect_short, rect_angle = _inscribed_rectangle(poly, angles, min_step_um)
    return ShapeMetrics(
        perimeter_um=float(poly.length),
        length_um=length,
        width_um=width,
        aspect_ratio=length / max(width, 1e-9),
        inscribed_diameter_um=2.0 * float(radius),
        rect_length_um=rect_long,
        rect_width_um=rect_short,
        rect_angle_deg=rect_angle,
    )
