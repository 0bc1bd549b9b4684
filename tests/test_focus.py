"""Autofocus, the focus surface and refocusing, on the simulated microscope.

The simulator tilts, bows and drifts the chip surface, and renders each frame blurred by its
real defocus; the tests read that defocus off the simulator (what the camera was given) and
hold the focus to it.
"""

from __future__ import annotations

import numpy as np
import pytest

from flakescan.daemon.scan import ScanRequest
from flakescan.db.engine import open_database, sqlite_url
from flakescan.hardware.config import TravelLimits
from flakescan.hardware.focus import (
    FocusConfig,
    FocusError,
    FocusPoint,
    FocusSurface,
    autofocus,
    map_focus,
    sharpness,
)
from tests.sim_helpers import scan_runner, sim_microscope


def microscope(limits: TravelLimits | None = None, **stage):
    return sim_microscope(limits, stage=stage)


class DefocusLog:
    """Records the defocus the simulator rendered each frame with."""

    def __init__(self, mic) -> None:
        self.values: list[float] = []
        renderer = mic.world.renderer
        original = renderer.render

        def render(*args, defocus_um: float = 0.0, **kw):
            self.values.append(defocus_um)
            return original(*args, defocus_um=defocus_um, **kw)

        renderer.render = render


def test_sharpness_peaks_where_the_surface_is():
    mic = microscope(focus_z_um=7.0)
    try:
        mic.move_xy(2000, 2000)
        zs = np.arange(-13.0, 28.0, 4.0)
        curve = []
        for z in zs:
            mic.move_z(float(z))
            curve.append(sharpness(mic.snap().image))
        assert abs(zs[int(np.argmax(curve))] - 7.0) <= 2.0
        assert max(curve) / min(curve) > 1.2  # a real focus curve, not noise
    finally:
        mic.close()


def test_autofocus_finds_the_surface_from_far_off_and_stays_inside_the_limits():
    # The surface at z = 3 um, the focus drive stops at 8 um: the sweep is clipped there.
    limits = TravelLimits(z_min_um=-500.0, z_max_um=8.0)
    mic = microscope(limits, focus_z_um=3.0)
    try:
        mic.move_xy(2000, 2000)
        point = autofocus(mic, FocusConfig(), z_start=-12.0)
        assert point.z_um == pytest.approx(3.0, abs=0.5)
        assert mic.z() == pytest.approx(point.z_um)
        assert max(z for z, _ in point.sweep) <= 8.0
    finally:
        mic.close()


def test_a_focus_beyond_the_sweep_is_an_error_not_a_guess():
    mic = microscope(focus_z_um=150.0)
    try:
        mic.move_xy(2000, 2000)
        with pytest.raises(FocusError, match=r"sharp|sharpness varies only"):
            autofocus(mic, FocusConfig(), z_start=0.0)
    finally:
        mic.close()


@pytest.mark.parametrize(
    ("stage", "kind"),
    [
        ({"focus_z_um": 10.0, "tilt_x_um_per_mm": 3.0, "tilt_y_um_per_mm": -2.0}, "plane"),
        ({"focus_z_um": 10.0, "tilt_x_um_per_mm": 1.0, "bow_um_per_mm2": 1.5}, "quadratic"),
    ],
)
def test_the_focus_surface_follows_a_tilted_or_bent_chip(stage, kind):
    mic = microscope(**stage)
    region = (1000.0, 1000.0, 4000.0, 4000.0)
    try:
        mic.move_z(10.0)
        surface = map_focus(mic, FocusConfig(points_per_axis=3), region)
        assert surface.kind == kind
        rng = np.random.default_rng(0)
        errors = [
            surface.z_at(x, y) - mic.world.surface_z_um(x, y)
            for x, y in rng.uniform(region[:2], region[2:], size=(50, 2))
        ]
        assert np.sqrt(np.mean(np.square(errors))) < 0.6, errors
    finally:
        mic.close()


def test_a_quadratic_surface_needs_six_points():
    three = [
        FocusPoint(0, 0, 0, 1, ()),
        FocusPoint(1000, 0, 1, 1, ()),
        FocusPoint(0, 900, 2, 1, ()),
    ]
    with pytest.raises(FocusError, match="needs 6 focus points"):
        FocusSurface.fit(three, FocusConfig(surface="quadratic"))
    with pytest.raises(FocusError, match="no focus point"):
        FocusSurface.fit([], FocusConfig())
    plane = FocusSurface.fit(three, FocusConfig())
    assert plane.kind == "plane" and plane.z_at(500, 450) == pytest.approx(1.5)


def _scan(mic, tmp_path, autofocus_on: bool, cfg: FocusConfig):
    engine = open_database(sqlite_url(tmp_path / f"af-{autofocus_on}.db"))
    events: list[tuple[str, dict]] = []

    def publish(topic: str, data: dict) -> None:
        if topic == "focus.refocused" and data["found"]:
            # Where the drifting surface really is at this moment, under the objective.
            data = {**data, "_true_z": mic.world.surface_z_um(data["x_um"], data["y_um"])}
        events.append((topic, data))

    runner = scan_runner(mic, engine, tmp_path / f"thumbs-{autofocus_on}", publish, focus=cfg)
    request = ScanRequest(
        region_um=(1000.0, 1000.0, 3400.0, 2700.0),
        overlap_pct=10.0,
        chip_id="tilted",
        autofocus=autofocus_on,
    )
    plan = runner.plan(request)
    mic.move_z(0.0)  # the focus drive where the last chip was: 12 um below this one
    tile_defocus: list[float] = []
    log = DefocusLog(mic)
    mic.core.mda.events.frameReady.connect(lambda *_: tile_defocus.append(log.values[-1]))
    outcome = runner.run(runner.open_scan(request, plan, {}), request, plan)
    engine.dispose()
    return outcome, events, np.abs(tile_defocus)


def test_a_scan_with_autofocus_keeps_a_tilted_drifting_chip_in_focus(tmp_path):
    # 12 um out at the start, tilted 4 and -3 um/mm, drifting 6 um/min. The drift runs on
    # the wall clock: on a loaded 2-core CI machine (2.2 s a tile) 12 um/min left 2.4 um
    # between refocuses; 6 um/min keeps the test about focusing, not about machine speed.
    stage = {
        "focus_z_um": 12.0,
        "tilt_x_um_per_mm": 4.0,
        "tilt_y_um_per_mm": -3.0,
        "focus_drift_um_per_min": 6.0,
    }
    cfg = FocusConfig(points_per_axis=2, refocus_every_tiles=4)
    mic = microscope(**stage)
    try:
        outcome, _, blind = _scan(mic, tmp_path, False, cfg)
    finally:
        mic.close()
    mic = microscope(**stage)
    try:
        outcome_af, events_af, focused = _scan(mic, tmp_path, True, cfg)
    finally:
        mic.close()
    assert outcome.status == outcome_af.status == "completed", outcome_af.reason
    assert len(focused) == len(blind) == outcome_af.tiles_planned >= 15
    print(
        f"defocus left, um: without autofocus median {np.median(blind):.2f} max {blind.max():.2f};"
        f" with median {np.median(focused):.2f} max {focused.max():.2f}"
    )
    assert np.median(blind) > 8.0  # the chip really is out of focus without it
    assert focused.max() < 2.0 and np.median(focused) < 1.0
    topics = [t for t, _ in events_af]
    assert topics.count("focus.point") >= 3 and "focus.surface" in topics
    refocused = [d for t, d in events_af if t == "focus.refocused" and d["found"]]
    assert len(refocused) >= 3
    surface = outcome_af.focus
    assert surface["kind"] in ("plane", "quadratic") and surface["refocused"] >= 3
    # Drift moved the surface, and each refocus found it where it had drifted to at that
    # moment (the drift runs on the wall clock, so how far it went depends on the machine's
    # speed; where the surface was when the refocus ended does not). 0.8 um: the fine
    # sweep's step, plus what the surface drifts while the sweep runs.
    for d in refocused:
        assert d["z_um"] == pytest.approx(d["_true_z"], abs=0.8), d
    last = refocused[-1]
    fit_z = FocusSurface.from_description({**surface, "offset_um": 0.0}).z_at(
        last["x_um"], last["y_um"]
    )
    print(
        f"last refocus: surface at {last['_true_z']:.2f} um, fit {fit_z:.2f} um,"
        f" found {surface['offset_um']:.2f} um off the fit"
    )
    assert surface["offset_um"] == pytest.approx(last["_true_z"] - fit_z, abs=0.8)
