"""Finding the chip before the scan: its outline at the lowest magnification, and a scan
that covers that outline and nothing beside it. The simulated chip has a broken corner."""

from __future__ import annotations

import json

import pytest
from shapely import union_all
from shapely.geometry import Polygon, box

from flakescan.daemon.chip_finder import ChipFinderConfig, find_chip
from flakescan.daemon.scan import ScanRequest
from flakescan.daemon.scan_plan import ScanPlan
from flakescan.db.engine import open_database, sqlite_url
from tests.sim_helpers import scan_runner, sim_microscope

# A 2.4 x 1.8 mm chip with a 1.0 x 0.8 mm corner broken off along a cleave line.
BROKEN = {"width_um": 2400.0, "height_um": 1800.0, "broken_corner_um": [1000.0, 800.0]}


def microscope(surround: str = "holder"):
    return sim_microscope(chip={**BROKEN, "surround": surround})


@pytest.mark.parametrize("surround", ["holder", "tape"])
def test_the_outline_of_a_broken_chip_is_found_on_holder_and_tape(surround):
    mic = microscope(surround)
    try:
        outline = find_chip(mic, ChipFinderConfig(), mic.default_region_um)
        truth = mic.world.chip.outline
        assert mic.objective.name == "5x"  # the scanning objective is back
    finally:
        mic.close()
    found = Polygon(outline.vertices_um)
    iou = found.intersection(truth).area / found.union(truth).area
    assert iou > 0.97, iou
    # The broken corner is not part of it: (2200, 1700) lies in the missing triangle.
    assert not found.contains(box(2150, 1650, 2250, 1750))
    assert outline.area_mm2 == pytest.approx(truth.area / 1e6, rel=0.03)


def test_a_scan_that_finds_its_chip_covers_the_outline_and_nothing_beside_it(tmp_path):
    mic = microscope()
    engine = open_database(sqlite_url(tmp_path / "chip.db"))
    events: list[tuple[str, dict]] = []
    runner = scan_runner(
        mic, engine, tmp_path / "thumbs", lambda topic, data: events.append((topic, data))
    )
    # Asked for the whole holder around the chip: the pre-pass narrows it to the chip.
    request = ScanRequest(
        region_um=(-600.0, -600.0, 3000.0, 2400.0), overlap_pct=10.0, chip_id="b", find_chip=True
    )
    try:
        rect_plan = runner.plan(request)
        outcome = runner.run(runner.open_scan(request, rect_plan, {}), request, rect_plan)
        truth = mic.world.chip.outline
        fov = mic.fov_um
    finally:
        mic.close()
    assert outcome.status == "completed", outcome.reason
    outline_ev = next(d for t, d in events if t == "chip.outline")
    started = next(d for t, d in events if t == "scan.started")
    assert started["tiles"] == outline_ev["tiles"] == outcome.tiles_planned == outcome.tiles_done
    # Fewer than half the tiles asked for, and fewer than the chip's bounding rectangle
    # needs: the broken corner is not scanned.
    assert outcome.tiles_planned < rect_plan.n_tiles / 2
    assert outcome.tiles_planned < ScanPlan(truth.bounds, fov, 10.0).n_tiles
    with engine.connect() as c:
        tiles = c.exec_driver_sql("SELECT x_um, y_um FROM tiles").fetchall()
        scan = c.exec_driver_sql("SELECT tiles_planned, settings_json FROM scans").one()
    engine.dispose()
    assert scan[0] == len(tiles) == outcome.tiles_planned
    assert json.loads(scan[1])["chip_outline"]["area_mm2"] == pytest.approx(
        truth.area / 1e6, rel=0.03
    )
    # Every tile sees the chip, and every bit of the chip is in some tile.
    fields = [box(x - fov[0] / 2, y - fov[1] / 2, x + fov[0] / 2, y + fov[1] / 2) for x, y in tiles]
    assert all(f.intersects(truth) for f in fields)

    covered = union_all(fields)
    assert truth.difference(covered).area < 1e-6 * truth.area
    # No tile wholly in the broken-off corner.
    corner = Polygon([(1400, 1800), (2400, 1000), (2400, 1800)])
    assert not any(corner.buffer(-1).contains(f) for f in fields)
