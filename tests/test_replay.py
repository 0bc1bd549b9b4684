"""Mosaics, per-chip conditions, the replay backend and evaluation against ground truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from flakescan.daemon.cli import main
from flakescan.hardware.backends import open_microscope
from flakescan.hardware.config import HardwareConfig, ObjectiveConfig, TravelLimits
from flakescan.hardware.errors import HardwareError
from flakescan.simulators.chip import Chip, generate_chip
from flakescan.simulators.conditions import draw_conditions
from flakescan.simulators.config import ChipSpec, ImagingSpec, ReplayConfig, SimulatorConfig
from flakescan.simulators.mosaic import Mosaic, render_mosaic
from flakescan.simulators.render import FieldRenderer

from .conftest import write_toml

PX = 0.57
SMALL = ChipSpec(width_um=1500, height_um=1200, thin_flakes_per_mm2=15)


@pytest.fixture(scope="module")
def chip() -> Chip:
    return generate_chip(SMALL, 4)


@pytest.fixture(scope="module")
def mosaic(chip) -> Mosaic:
    return render_mosaic(chip, ImagingSpec(), PX, 0.14, seed=4)


def test_a_mosaic_crop_is_the_field_a_camera_sees_there(chip, mosaic):
    even = ImagingSpec(vignetting=0, illumination_offset=(0, 0), illumination_gradient=0)
    x, y = 740.0, 610.0  # the middle of the chip: the whole field lies on the mosaic
    direct = FieldRenderer(chip, even, PX, 0.14, seed=9).render(x, y)
    crop = mosaic.crop(x, y, direct.shape[:2])
    assert chip.query(x - 290, y - 210, x + 290, y + 210), "the field should show objects"

    def smooth(a: np.ndarray) -> np.ndarray:  # average the noise away, keep the objects
        return ndimage.gaussian_filter(a[..., 0].astype(float), 2)

    a, b = smooth(crop), smooth(direct)
    # Same objects in the same place: the best alignment of the two is no shift at all.
    shifts = [(dr, dc) for dr in range(-3, 4) for dc in range(-3, 4)]
    score = {
        s: np.corrcoef(np.roll(a, s, axis=(0, 1))[8:-8, 8:-8].ravel(), b[8:-8, 8:-8].ravel())[0, 1]
        for s in shifts
    }
    assert max(score, key=score.get) == (0, 0)
    assert score[(0, 0)] > 0.9
    # Off the mosaic there is nothing.
    assert not mosaic.crop(-5000, -5000, (64, 64)).any()


def test_mosaic_round_trip_and_stitching_tiles(tmp_path, mosaic):
    m = Mosaic.load(mosaic.save(tmp_path / "m"))
    assert np.array_equal(m.image, mosaic.image) and m.origin_um == mosaic.origin_um
    # Record tiles at a grid of positions, then stitch them back by their positions.
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    rows = []
    ox, oy = mosaic.origin_um
    # Recorded positions on the mosaic's pixel grid, as a stage with 0.57 um steps gives.
    grid = [(ox + (c + 249.5) * PX, oy + (r + 199.5) * PX) for r in (400, 750) for c in (500, 950)]
    for i, (x, y) in enumerate(grid):
        Image.fromarray(mosaic.crop(x, y, (400, 500))).save(tiles / f"t{i}.png")
        rows.append({"file": f"t{i}.png", "x_um": x, "y_um": y})
    with open(tiles / "tiles.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "x_um", "y_um"])
        w.writeheader()
        w.writerows(rows)
    (tiles / "tiles.json").write_text(json.dumps({"um_per_px": PX, "linear": True}))
    stitched = Mosaic.from_tiles(tiles)
    x, y = ox + 1000.5 * PX, oy + 800.5 * PX  # inside all four tiles
    assert np.array_equal(stitched.crop(x, y, (300, 300)), mosaic.crop(x, y, (300, 300)))
    with pytest.raises(ValueError, match="not a mosaic description"):
        (tmp_path / "bad.json").write_text('{"image": "x.png"}')
        Mosaic.load(tmp_path / "bad.json")


def test_per_chip_conditions_are_diverse_and_reproducible():
    base = SimulatorConfig()
    a, b = draw_conditions(base, 1), draw_conditions(base, 2)
    assert a == draw_conditions(base, 1)
    assert a.imaging.flare != b.imaging.flare and a.chip.oxide_nm != b.chip.oxide_nm
    for c in (a, b):
        assert 0.98 * 285 <= c.chip.oxide_nm <= 1.02 * 285
        assert 0.08 <= c.imaging.flare <= 0.22
        assert not c.vary_conditions


def test_replay_serves_the_recording_at_the_stage_position(tmp_path, mosaic):
    sidecar = mosaic.save(tmp_path / "rec")
    replay = ReplayConfig(mosaic=sidecar, width_px=640, height_px=480)
    mic = open_microscope(
        HardwareConfig(backend="replay"), ObjectiveConfig(), TravelLimits(), replay=replay
    )
    try:
        assert mic.pixel_size_um == pytest.approx(PX)
        assert mic.default_region_um == pytest.approx(mosaic.extent_um)
        mic.move_xy(700.0, 500.0)
        frame = mic.snap()
        assert np.array_equal(frame.image, mosaic.crop(700.0, 500.0, (480, 640)))
    finally:
        mic.close()
    with pytest.raises(HardwareError, match=r"the recording has 0\.57 um/px"):
        open_microscope(
            HardwareConfig(backend="replay"),
            ObjectiveConfig(pixel_size_um=1.0),
            TravelLimits(),
            replay=replay,
        )
    with pytest.raises(ValueError, match="exactly one of mosaic"):
        ReplayConfig()


@pytest.mark.slow
def test_a_generated_mosaic_replayed_through_the_daemon_and_evaluated(
    tmp_path, start_daemon, capsys
):
    out = tmp_path / "chip"
    sim_cfg = write_toml(
        tmp_path / "sim.toml", {"simulator": {"chip": {"thin_flakes_per_mm2": 15.0}}}
    )
    args = ["simulate", "chip", "--seed", "7", "--out", str(out), "--size-um", "1500", "1200"]
    assert main([*args, "--config", str(sim_cfg), "--vary"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"mosaic.png", "mosaic.json", "truth.json", "preview.png"} <= names
    truth = json.loads((out / "truth.json").read_text())
    assert truth["conditions"]["pixel_size_um"] == PX and truth["material"] == "graphene"
    d = start_daemon(
        {"hardware": {"backend": "replay"}, "replay": {"mosaic": str(out / "mosaic.json")}}
    )
    scan = ["scan", "--config", str(d.config_path), "--no-progress"]
    assert main(scan) == 0
    assert "scan 1 completed" in capsys.readouterr().out
    evaluate = ["evaluate", "--scan", "1", "--truth", str(out / "truth.json")]
    assert main([*evaluate, "--db", str(d.db_path), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    overall = result["classes"][-1]
    assert overall["class"] == "all" and overall["truth"] >= 8
    assert overall["recall"] >= 0.9 and overall["precision"] >= 0.9
    assert result["position_error_um_median"] < 2.0
    assert result["axis_mae_deg"] < 5.0
    assert result["axis_edges_n"] > 0 and result["axis_edges_mae_deg"] < 5.0
    # Both stored readings, judged on the same flakes: what axis_primary should be.
    readings = result["axis_readings"]
    assert set(readings) == {"cnn", "edges"}
    assert readings["cnn"]["n"] == readings["edges"]["n"] > 0
    assert all(r["lattice_mae_deg"] < 6.0 for r in readings.values()), readings
    assert main([*evaluate, "--db", str(d.db_path)]) == 0  # the table for people
    printed = capsys.readouterr().out
    assert "recall" in printed and "straight edges agree on" in printed
    assert "cnn reading" in printed and "edges reading" in printed
    assert d.stop() == 0
