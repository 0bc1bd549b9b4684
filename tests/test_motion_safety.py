"""Motion safety, property-based (hypothesis): whatever the travel limits, the scan region,
the overlap, the focus plane or the move asked for, no stage is ever commanded outside the
limits, and Z never below the safe plane (`z_min_um`: the objective must not reach the chip).

The simulated stages record every target they are commanded to; these tests audit that
record, so a check that is skipped anywhere on the way (planner, engine, autofocus,
goto) shows up as a commanded target outside the box.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flakescan.daemon.scan import ScanRequest
from flakescan.daemon.scan_plan import ScanPlan
from flakescan.db.engine import open_database, sqlite_url
from flakescan.hardware.config import TravelLimits
from flakescan.hardware.errors import TravelLimitError
from flakescan.hardware.focus import FocusConfig
from tests.sim_helpers import scan_runner, sim_microscope

FOV = (583.68, 437.76)  # the simulator's 5x field, um
coordinate = st.floats(-5000, 30000, allow_nan=False)


@st.composite
def limits(draw: st.DrawFn, min_span: float = 1, around_focus: bool = False) -> TravelLimits:
    """A travel box; `around_focus`: its Z range holds the simulated chip's focus (z = 0)."""
    x0 = draw(st.floats(-2000, 20000))
    y0 = draw(st.floats(-2000, 20000))
    if around_focus:
        z_min, z_max = draw(st.floats(-100, -1)), draw(st.floats(1, 100))
    else:
        z_min = draw(st.floats(-400, 0))
        z_max = z_min + draw(st.floats(1, 600))
    return TravelLimits(
        x_min_um=x0,
        x_max_um=x0 + draw(st.floats(min_span, 8000)),
        y_min_um=y0,
        y_max_um=y0 + draw(st.floats(min_span, 8000)),
        z_min_um=z_min,
        z_max_um=z_max,
    )


@st.composite
def regions(draw: st.DrawFn, max_span: float = 6000) -> tuple[float, float, float, float]:
    x0, y0 = draw(coordinate), draw(coordinate)
    return (x0, y0, x0 + draw(st.floats(1, max_span)), y0 + draw(st.floats(1, max_span)))


def audit(world, lim: TravelLimits) -> None:
    """Every commanded target lies inside the limits."""
    for kind, target in world.commanded:
        if kind == "xy":
            assert lim.contains_xy(*target), f"XY commanded to {target} outside {lim}"
        else:
            (z,) = target
            assert lim.z_min_um <= z <= lim.z_max_um, f"Z commanded to {z} outside {lim}"


@given(lim=limits(), region=regions(), overlap=st.floats(0, 60), z=st.none() | st.floats(-600, 600))
@settings(max_examples=300, deadline=None)
def test_a_plan_is_refused_or_lies_wholly_inside_the_limits(lim, region, overlap, z):
    plan = ScanPlan(region, FOV, overlap, z)
    try:
        plan.check_limits(lim)
    except TravelLimitError:
        outside = [c for c in plan.centres if not lim.contains_xy(*c)]
        assert outside or (z is not None and not lim.contains_z(z))
        return
    assert all(lim.contains_xy(x, y) for x, y in plan.centres)
    assert z is None or lim.contains_z(z)


@pytest.fixture(scope="module")
def mic():
    m = sim_microscope(
        TravelLimits(
            x_min_um=0, x_max_um=6000, y_min_um=0, y_max_um=5000, z_min_um=-20, z_max_um=40
        )
    )
    yield m
    m.close()


@given(
    x=st.floats(allow_nan=True, allow_infinity=True, width=64),
    y=st.floats(-1e6, 1e6),
    z=st.floats(allow_nan=True, allow_infinity=True),
)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_move_outside_the_limits_is_refused_before_anything_is_commanded(mic, x, y, z):
    lim, world = mic.limits, mic.world
    before = len(world.commanded)
    inside_xy = math.isfinite(x) and lim.contains_xy(x, y)
    if inside_xy:
        mic.move_xy(x, y, wait=False)
    else:
        with pytest.raises(TravelLimitError, match="outside the travel limits"):
            mic.move_xy(x, y)
    if math.isfinite(z) and lim.contains_z(z):
        mic.move_z(z, wait=False)
    else:
        with pytest.raises(TravelLimitError, match="outside the travel limits"):
            mic.move_z(z)
    new = list(world.commanded)[before:]
    assert len([c for c in new if c[0] == "xy"]) == int(inside_xy)
    audit(world, lim)


@given(
    lim=limits(min_span=1500, around_focus=True),
    where=st.tuples(st.floats(-0.1, 0.8), st.floats(-0.1, 0.8)),
    size=st.tuples(st.floats(1, 900), st.floats(1, 900)),
    overlap=st.floats(0, 40),
    tilt=st.floats(-40, 40),
    autofocus=st.booleans(),
)
@settings(max_examples=6, deadline=None)
def test_a_whole_scan_never_commands_a_move_outside_the_limits(
    tmp_path_factory, lim, where, size, overlap, tilt, autofocus
):
    """Scans near the edges of the limits (with autofocus on a chip tilted up to 40 um/mm,
    so that the focus surface may leave the Z range) either run or are refused; either way
    the audit is clean."""
    x0 = lim.x_min_um + where[0] * (lim.x_max_um - lim.x_min_um)
    y0 = lim.y_min_um + where[1] * (lim.y_max_um - lim.y_min_um)
    region = (x0, y0, x0 + size[0], y0 + size[1])
    tmp = tmp_path_factory.mktemp("scan")
    m = sim_microscope(lim, stage={"tilt_x_um_per_mm": tilt})
    engine = open_database(sqlite_url(tmp / "s.db"))
    try:
        runner = scan_runner(
            m, engine, tmp / "thumbs", focus=FocusConfig(points_per_axis=2, refocus_every_tiles=2)
        )
        request = ScanRequest(region, overlap, "p", autofocus=autofocus)
        try:
            plan = runner.plan(request)
        except (TravelLimitError, ValueError):
            event("refused at planning")
            assert not m.world.commanded  # refused before anything moved
            return
        scan_id = runner.open_scan(request, plan, {})
        outcome = runner.run(scan_id, request, plan)
        event(f"scan {outcome.status}: {outcome.reason.split(':')[0]}")
        assert outcome.status in ("completed", "failed")
        if outcome.status == "failed":
            assert outcome.reason  # a refusal mid-scan says why
        audit(m.world, lim)
    finally:
        engine.dispose()
        m.close()
