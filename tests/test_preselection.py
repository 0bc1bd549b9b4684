"""Preselection, background and axis estimation on rendered tiles with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from flakescan.inference.axis import estimate_axis
from flakescan.inference.background import estimate_background
from flakescan.inference.config import PreselectionConfig
from flakescan.inference.preselection import contrast_class, preselect
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.config import ChipSpec, ImagingSpec
from flakescan.simulators.render import FieldRenderer

PX = 0.57
H, W = 768, 1024


@pytest.fixture(scope="module")
def scene():
    chip = generate_chip(ChipSpec(width_um=4000, height_um=4000, thin_flakes_per_mm2=12), 11)
    return chip, FieldRenderer(chip, ImagingSpec(), PX, 0.14, seed=11)


def to_stage(x, y, rc):
    return (x + (rc[1] - (W - 1) / 2) * PX, y + (rc[0] - (H - 1) / 2) * PX)


def nearest(cands, x, y, fx, fy):
    best = None
    for c in cands:
        sx, sy = to_stage(x, y, c.centroid_px)
        d = float(np.hypot(sx - fx, sy - fy))
        if best is None or d < best[0]:
            best = (d, c)
    return best


def test_background_follows_the_illumination_falloff(scene):
    _, r = scene
    img = r.render(2000, 2000)
    bg = estimate_background(img)
    assert bg.fraction > 0.7
    model = bg.evaluate()
    assert model[0, 0, 2] < model[H // 2, W // 2, 2]  # corners darker
    # Off the flakes, the fit is within noise of the image.
    smooth = img.reshape(H // 16, 16, W // 16, 16, 3).mean(axis=(1, 3))
    fit = model[8::16, 8::16]
    rel = np.abs(smooth - fit) / fit
    assert np.median(rel) < 0.01


def test_thin_flakes_are_found_with_their_contrast_class(scene):
    chip, r = scene
    cfg = PreselectionConfig()
    found = total = 0
    classes = {}
    free = [f for f in chip.flakes(1, 5) if f.area_um2 >= 3 * cfg.min_area_um2 and not f.parent_id]
    for f in free[:30]:
        x, y = f.centroid_um
        res = preselect(r.render(x, y), PX, cfg)
        best = nearest(res.candidates, x, y, x, y)
        total += 1
        if best and best[0] <= f.radius_um:
            found += 1
            classes.setdefault(f.layers, []).append(best[1].contrast_class)
    assert total >= 10
    assert found / total >= 0.95
    assert all(c == 1 for c in classes.get(1, []))  # monolayers: R contrast <= 12 %
    assert all(c == 3 for c in classes.get(5, []))  # 5 layers: 19-30 %


def test_dust_and_bare_wafer_give_no_candidates(scene):
    chip, r = scene
    cfg = PreselectionConfig()
    dusts = [o for o in chip.objects if o.kind == "dust" and o.area_um2 > cfg.min_area_um2]
    dust = dusts[0]
    x, y = dust.centroid_um
    res = preselect(r.render(x, y), PX, cfg)
    hit = nearest(res.candidates, x, y, x, y)
    assert hit is None or hit[0] > 10  # grey dust fails the colour window


def test_minimum_area_is_applied_in_square_micrometres(scene):
    chip, r = scene
    f = max((o for o in chip.flakes(1, 1) if o.parent_id is None), key=lambda o: o.area_um2)
    img = r.render(*f.centroid_um)
    small = preselect(img, PX, PreselectionConfig(min_area_um2=10))
    large = preselect(img, PX, PreselectionConfig(min_area_um2=f.area_um2 * 2))
    assert any(c.area_um2 >= 0.8 * f.area_um2 for c in small.candidates)
    assert all(c.area_um2 >= f.area_um2 * 2 for c in large.candidates)


def test_a_tile_off_the_wafer_is_skipped_with_a_reason(scene):
    _, r = scene
    cfg = PreselectionConfig()
    wafer = preselect(r.render(2000, 2000), PX, cfg).background.colour
    # Off the chip there is only the holder: nothing like the wafer seen before.
    res = preselect(r.render(-3000, -3000), PX, cfg, wafer_colour=wafer)
    assert res.candidates == [] and res.contrast is None
    assert res.skipped_reason is not None and "bare wafer" in res.skipped_reason


def test_contrast_bins():
    bins = (0.0, 0.12, 0.19, 0.30)
    assert [contrast_class(c, bins) for c in (0.07, 0.12, 0.15, 0.25, 0.35, -0.02)] == [
        1,
        1,
        2,
        3,
        0,
        0,
    ]


def test_bad_preselection_windows_are_refused():
    with pytest.raises(ValueError, match=r"contrast_min\[G\]"):
        PreselectionConfig(contrast_min=(0.03, 0.5, -0.06))


def test_axis_angle_of_straight_edged_flakes(scene):
    chip, r = scene
    cfg = PreselectionConfig()
    errors = []
    for f in [f for f in chip.flakes(1, 5) if f.area_um2 >= 150][:30]:
        x, y = f.centroid_um
        res = preselect(r.render(x, y), PX, cfg)
        best = nearest(res.candidates, x, y, x, y)
        if not best or best[0] > f.radius_um:
            continue
        c = best[1]
        r0, c0, r1, c1 = c.bbox_px
        m = 6
        R0, C0, R1, C1 = max(r0 - m, 0), max(c0 - m, 0), min(r1 + m, H), min(c1 + m, W)
        region = np.zeros((R1 - R0, C1 - C0), bool)
        region[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] = c.mask
        est = estimate_axis(res.contrast[R0:R1, C0:C1, :2].sum(-1), region)
        assert est is not None and 0 <= est.angle_deg < 30
        errors.append((est.angle_deg - f.axis_deg % 30 + 15) % 30 - 15)
    errors = np.abs(errors)
    assert len(errors) >= 10
    # A random guess has a median error of 7.5 deg; straight edges do far better.
    assert np.median(errors) < 3.0


def test_axis_on_synthetic_hexagons_at_every_angle():
    yy, xx = np.mgrid[0:200, 0:200].astype(float)
    for angle in np.arange(0.0, 30.0, 2.3):
        mask = np.ones((200, 200), bool)
        for k in range(6):
            t = np.radians(angle + 90 + 60 * k)
            mask &= (xx - 100) * np.cos(t) + (yy - 100) * np.sin(t) <= 60
        est = estimate_axis(mask.astype(float), mask)
        assert est is not None
        # Even a hard-edged (unblurred) mask: no pull towards the pixel axes.
        assert abs((est.angle_deg - angle + 15) % 30 - 15) < 0.6, angle
        assert est.confidence > 0.5


def test_at_the_chip_edge_the_wafer_colour_of_earlier_tiles_anchors_the_background(scene):
    chip, r = scene
    edge = chip.spec.width_um
    cfg = PreselectionConfig()
    # A thin flake near the right edge, imaged by a tile that is half off the chip.
    near_edge = [
        f
        for f in chip.flakes(1, 3)
        if edge - 250 < f.centroid_um[0] < edge - 60 and f.area_um2 > 80
    ]
    assert near_edge, "the test chip should have a flake near its edge"
    f = near_edge[0]
    fx, fy = f.centroid_um
    tile_x = edge + 20  # 48 % of the field is holder
    img = r.render(tile_x, fy)
    wafer = preselect(r.render(edge / 2, edge / 2), PX, cfg).background.colour
    res = preselect(img, PX, cfg, wafer_colour=wafer)
    assert 0.3 < res.background.fraction < 0.6
    assert res.background.colour == pytest.approx(wafer, rel=0.05)
    best = nearest(res.candidates, tile_x, fy, fx, fy)
    assert best is not None and best[0] <= f.radius_um
