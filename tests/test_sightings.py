"""A flake larger than the tile overlap, seen from two tiles, is one flake."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from flakescan.daemon.sightings import SightingIndex, merge
from flakescan.inference.pipeline import Hit


def hit(bbox, area, cut=True, conf=0.5, angle=10.0) -> Hit:
    x0, y0, x1, y1 = bbox
    return Hit(
        x_um=(x0 + x1) / 2,
        y_um=(y0 + y1) / 2,
        bbox_um=bbox,
        area_um2=area,
        flake_class=1,
        scores=(0.9, 0.1, 0.0, 0.95),
        contrast=(0.06, 0.06, 0.0),
        contrast_class=1,
        axis_angle_deg=angle,
        axis_confidence=conf,
        touches_border=cut,
        centroid_px=(0.0, 0.0),
        thumbnail=np.zeros((2, 2, 3), np.uint8),
    )


def test_two_cut_views_combine():
    left = hit((0, 0, 60, 40), 1800, conf=0.3, angle=11.0)
    right = hit((50, 5, 100, 45), 1500, conf=0.6, angle=12.0)
    m = merge(left, right)
    assert m is not None
    assert m.bbox_um == (0, 0, 100, 45) and m.area_um2 == 1800 and m.touches_border
    assert m.axis_angle_deg == 12.0  # the more confident view
    assert (m.x_um, m.y_um) == (50, 22.5)


def test_a_whole_view_replaces_a_cut_one_and_not_the_other_way():
    cut, whole = hit((0, 0, 60, 40), 1200), hit((0, 0, 80, 40), 2000, cut=False)
    assert merge(cut, whole) == whole
    assert merge(whole, cut) is None


def test_the_index_matches_other_tiles_only_and_needs_a_cut():
    index = SightingIndex()
    index.add(7, tile_index=0, hit=hit((0, 0, 60, 40), 1800))
    assert index.match(hit((55, 0, 90, 40), 900), tile_index=1).flake_id == 7
    assert index.match(hit((55, 0, 90, 40), 900), tile_index=0) is None  # same tile
    assert index.match(hit((70, 0, 90, 40), 900), tile_index=1) is None  # apart
    index2 = SightingIndex()
    index2.add(8, tile_index=0, hit=hit((0, 0, 60, 40), 1800, cut=False))
    # Two whole flakes touching: two flakes.
    assert index2.match(replace(hit((55, 0, 90, 40), 900), touches_border=False), 1) is None
