"""One flake, seen from two tiles: a flake larger than the tile overlap is cut by the frame
edge in both, and each cut piece may pass the tile-ownership rule. The scan keeps the flakes
it logged, recognises a later sighting by overlapping bounding boxes (one of the two cut by a
frame edge), and merges it into the logged row instead of logging a second flake.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flakescan.inference.pipeline import AXIS_FIELDS, Hit
from flakescan.inference.shape import measure_shape, outline_area, outline_union

__all__ = ["SightingIndex", "merge"]


@dataclass
class _Sighting:
    flake_id: int
    tile_index: int
    hit: Hit


def _overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    return (
        a[0] - margin <= b[2]
        and b[0] - margin <= a[2]
        and a[1] - margin <= b[3]
        and b[1] - margin <= a[3]
    )


def merge(old: Hit, new: Hit) -> Hit | None:
    """The best account of one flake from two sightings; None if the new one adds nothing.

    A whole view beats a cut one; two cut views of a flake larger than both combine their
    bounding boxes and outlines (area and shape are the union's), and the larger piece
    speaks for colour, class and scores.
    """
    if not new.touches_border and old.touches_border:
        return new
    if not old.touches_border:
        return None
    big, small = (old, new) if old.area_um2 >= new.area_um2 else (new, old)
    bbox = (
        min(old.bbox_um[0], new.bbox_um[0]),
        min(old.bbox_um[1], new.bbox_um[1]),
        max(old.bbox_um[2], new.bbox_um[2]),
        max(old.bbox_um[3], new.bbox_um[3]),
    )
    # The axis of the better view: the CNN's over the edges', then the more confident.
    axis = max((old, new), key=lambda h: (h.axis_source == "cnn", h.axis_confidence or 0.0))
    outline, area = big.outline_um, big.area_um2
    if old.outline_um and new.outline_um:
        # The whole flake's area: the larger piece's pixel area scaled by what the union
        # of the two outlines adds to its own.
        outline = outline_union(old.outline_um, new.outline_um)
        area = big.area_um2 * outline_area(outline) / max(outline_area(big.outline_um), 1e-9)
    return replace(
        big,
        x_um=(bbox[0] + bbox[2]) / 2 if small.area_um2 > 0.2 * big.area_um2 else big.x_um,
        y_um=(bbox[1] + bbox[3]) / 2 if small.area_um2 > 0.2 * big.area_um2 else big.y_um,
        bbox_um=bbox,
        area_um2=area,
        touches_border=True,
        outline_um=outline,
        shape=measure_shape(outline) if outline else big.shape,
        **{name: getattr(axis, name) for name in AXIS_FIELDS},
    )


class SightingIndex:
    """The flakes a scan has logged, by bounding box."""

    def __init__(self, margin_um: float = 2.0) -> None:
        self.margin_um = margin_um
        self._seen: list[_Sighting] = []

    def match(self, hit: Hit, tile_index: int) -> _Sighting | None:
        """A flake logged from another tile that this hit is another view of."""
        for s in self._seen:
            if (
                s.tile_index != tile_index
                and (hit.touches_border or s.hit.touches_border)
                and _overlap(hit.bbox_um, s.hit.bbox_um, self.margin_um)
            ):
                return s
        return None

    def add(self, flake_id: int, tile_index: int, hit: Hit) -> None:
        self._seen.append(_Sighting(flake_id, tile_index, hit))

    def replace(self, sighting: _Sighting, hit: Hit) -> None:
        sighting.hit = hit
