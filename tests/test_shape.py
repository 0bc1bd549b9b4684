"""Outlines and shape figures of flakes, against shapes whose answers are known."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from shapely.geometry import Polygon
from skimage.draw import polygon as raster_polygon

from flakescan.daemon.sightings import merge
from flakescan.inference.shape import measure_shape, outline_from_mask, outline_polygon
from tests.test_sightings import hit as sighting_hit


def rotated_rectangle_mask(length: float, width: float, angle_deg: float, size: int = 160):
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [length / 2, width / 2]
    xy = corners @ rot.T + size / 2
    mask = np.zeros((size, size), bool)
    rr, cc = raster_polygon(xy[:, 1], xy[:, 0], mask.shape)
    mask[rr, cc] = True
    return mask


def test_outline_maps_pixels_to_stage_micrometres():
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True  # 10 x 10 px
    px, x0, y0 = 0.5, 1000.0, 2000.0
    outline = outline_from_mask(mask, lambda r, c: (x0 + c * px, y0 + r * px))
    poly = Polygon(outline)
    # The boundary runs half a pixel outside the centres of the edge pixels.
    assert poly.bounds == pytest.approx((1004.75, 2002.25, 1009.75, 2007.25), abs=0.01)
    assert poly.area == pytest.approx((10 * px) ** 2, rel=0.05)


@pytest.mark.parametrize("angle", [0.0, 17.0, 30.0, 71.0])
def test_a_rotated_rectangle_is_measured_along_its_own_axes(angle):
    mask = rotated_rectangle_mask(80, 20, angle)
    shape = measure_shape(outline_from_mask(mask, lambda r, c: (c, r)))
    assert shape.length_um == pytest.approx(80, abs=2)
    assert shape.width_um == pytest.approx(20, abs=2)
    assert shape.aspect_ratio == pytest.approx(4, rel=0.1)
    assert shape.inscribed_diameter_um == pytest.approx(20, abs=2)
    # The largest rectangle inside is the flake itself, found along the flake's direction
    # (searched every 15 deg and along the bounding rectangle), and never larger than it.
    assert shape.rect_length_um * shape.rect_width_um <= 80 * 20 * 1.02
    assert shape.rect_length_um * shape.rect_width_um >= 80 * 20 * 0.85
    assert min(abs(shape.rect_angle_deg - angle), 180 - abs(shape.rect_angle_deg - angle)) < 1.0


def test_a_disc_has_its_diameter_inscribed_and_a_square_that_fits():
    yy, xx = np.mgrid[:200, :200]
    mask = (yy - 100) ** 2 + (xx - 100) ** 2 < 80**2
    shape = measure_shape(outline_from_mask(mask, lambda r, c: (c, r)))
    assert shape.inscribed_diameter_um == pytest.approx(160, abs=2)
    assert shape.aspect_ratio == pytest.approx(1.0, abs=0.02)
    # The largest rectangle in a circle of radius r is the square of area 2 r^2.
    area = shape.rect_length_um * shape.rect_width_um
    assert 0.9 * 2 * 80**2 <= area <= 2 * 80**2


def test_an_l_shaped_flake_gives_the_rectangle_of_its_longer_arm():
    mask = np.zeros((120, 120), bool)
    mask[10:110, 10:40] = True  # arm 100 x 30
    mask[80:110, 10:70] = True  # foot 60 x 30
    shape = measure_shape(outline_from_mask(mask, lambda r, c: (c, r)))
    assert shape.rect_length_um == pytest.approx(100, rel=0.05)
    assert shape.rect_width_um == pytest.approx(30, rel=0.07)
    assert shape.rect_angle_deg == pytest.approx(90, abs=1)
    # The widest round spot is at the inner corner: r = 30 sqrt2 / (1 + sqrt2).
    assert shape.inscribed_diameter_um == pytest.approx(2 * 30 * 2**0.5 / (1 + 2**0.5), abs=1)


def test_a_degenerate_outline_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="degenerate outline"):
        measure_shape(((0.0, 0.0), (1.0, 1.0), (2.0, 2.0)))
    with pytest.raises(ValueError, match="empty"):
        outline_from_mask(np.zeros((5, 5), bool), lambda r, c: (c, r))


def test_two_cut_views_of_one_flake_are_measured_as_the_whole_flake():
    # A 100 x 20 um flake cut at x = 60 by one tile's edge and at x = 40 by the other's.
    def piece(x0, x1):
        outline = ((x0, 0.0), (x1, 0.0), (x1, 20.0), (x0, 20.0))
        return replace(
            sighting_hit((x0, 0, x1, 20), (x1 - x0) * 20),
            outline_um=outline,
            shape=measure_shape(outline),
        )

    merged = merge(piece(0, 60), piece(40, 100))
    assert merged is not None
    assert outline_polygon(merged.outline_um).area == pytest.approx(2000, rel=1e-6)
    assert merged.area_um2 == pytest.approx(2000, rel=1e-6)  # the overlap counted once
    assert merged.shape.length_um == pytest.approx(100) and merged.shape.width_um == 20
