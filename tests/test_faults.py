"""Device faults and the fault policy: real MMCore with the simulated devices (and the Prior
driver on a real pty), real SQLite, the shipped classifier.

Each fault the simulators inject (a failed move, a stage that never arrives, a stuck busy
flag, a camera error or timeout, a black, partial or saturated frame, a lost serial link)
meets each action of `[hardware.fault_policy]`: a transient fault under `retry` ends in a
completed scan with every tile present and the retries counted; a permanent one fails the
scan with a reason naming the device, the fault, the tile and the retries; `rehome` homes
the stage and goes on. Whatever the faults, a scan reported completed holds every planned
tile in the catalogue.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import mm_test_adapters
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flakescan.daemon.scan import ScanOutcome, ScanRequest, ScanRunner
from flakescan.db.catalogue import CatalogueWriter
from flakescan.db.engine import open_database, sqlite_url
from flakescan.hardware.backends import open_microscope
from flakescan.hardware.config import HardwareConfig, ObjectiveConfig, ParkConfig, TravelLimits
from flakescan.hardware.errors import DeviceError, HardwareError
from flakescan.hardware.fault_policy import FaultError, FaultPolicy, FaultRunner
from flakescan.hardware.frame_check import frame_problem
from flakescan.hardware.microscope import Microscope
from flakescan.inference.pipeline import TileResult
from flakescan.simulators.config import FaultSpec
from flakescan.simulators.prior_pty import ProScanSimulator

from .sim_helpers import scan_runner, sim_microscope
from .test_prior_stage import write_cfg

REQUEST = ScanRequest(region_um=(2000.0, 2000.0, 3000.0, 2800.0), overlap_pct=10.0, chip_id="c")
LIMITS = TravelLimits(
    x_min_um=-1000, x_max_um=8000, y_min_um=-1000, y_max_um=8000, z_min_um=-50, z_max_um=200
)


def policy(**kinds: dict[str, Any]) -> FaultPolicy:
    """A policy with no delays; `kinds` override single kinds (action, max_retries)."""
    fast = {"retry_delay_s": 0.0}
    base = {k: fast for k in FaultPolicy.model_fields if k != "home_xy_um"}
    return FaultPolicy.model_validate({**base, **{k: {**fast, **v} for k, v in kinds.items()}})


def hardware(pol: FaultPolicy | None = None, **kw: Any) -> HardwareConfig:
    # A short device timeout, so that a stage that never arrives is found out quickly.
    return HardwareConfig(timeout_ms=300, fault_policy=pol or policy(), **kw)


class Scanned:
    """One scan on a fresh simulated microscope with the given faults and policy."""

    def __init__(self, tmp: Path, faults: dict, pol: FaultPolicy | None = None, **kw: Any):
        self.db = tmp / "scan.db"
        self.engine = open_database(sqlite_url(self.db))
        self.mic = sim_microscope(LIMITS, faults=faults, hardware=hardware(pol, **kw))
        self.events: list[tuple[str, dict]] = []
        self.frames: list[np.ndarray] = []
        self.runner = scan_runner(
            self.mic, self.engine, tmp / "thumbs", lambda t, d: self.events.append((t, d))
        )
        self.mic.core.mda.events.frameReady.connect(lambda img, *_: self.frames.append(img))

    def run(self, request: ScanRequest = REQUEST) -> ScanOutcome:
        plan = self.runner.plan(request)
        scan_id = self.runner.open_scan(request, plan, {})
        return self.runner.run(scan_id, request, plan)

    def tiles(self) -> list[int]:
        return [i for (i,) in rows(self.db, "SELECT tile_index FROM tiles ORDER BY tile_index")]

    def close(self) -> None:
        self.mic.close()
        self.engine.dispose()


@pytest.fixture
def scanned(tmp_path: Path) -> Iterator:
    made: list[Scanned] = []

    def make(faults: dict, pol: FaultPolicy | None = None, **kw: Any) -> Scanned:
        s = Scanned(tmp_path / f"s{len(made)}", faults, pol, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def rows(db: Path, sql: str, *args: Any) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def assert_complete(s: Scanned, outcome: ScanOutcome) -> None:
    assert (outcome.status, outcome.reason) == ("completed", "")
    assert s.tiles() == [0, 1, 2, 3] == list(range(outcome.tiles_planned))
    assert rows(s.db, "SELECT status FROM scans") == [("completed",)]
    topic, data = s.events[-1]
    assert topic == "scan.finished" and data["faults"] == outcome.faults
    for k, frame in enumerate(s.frames):
        assert frame_problem(frame) is None, f"frame {k} reached the pipeline corrupt"


def assert_failed(s: Scanned, outcome: ScanOutcome, *parts: str) -> None:
    assert outcome.status == "failed"
    for part in parts:
        assert part in outcome.reason, f"{part!r} not in {outcome.reason!r}"
    assert rows(s.db, "SELECT status FROM scans") == [("failed",)]
    assert s.events[-1][0] == "scan.failed"
    assert len(s.tiles()) == outcome.tiles_done < outcome.tiles_planned


# -- transient faults + retry: completed, every tile, counted -----------------------------
@pytest.mark.parametrize(
    ("faults", "counts"),
    [
        ({"xy_fail_on_move": 2, "xy_fail_count": 2}, {"xy_move_retries": 2}),
        ({"xy_stall_on_move": 3, "xy_stall_count": 1}, {"xy_timeout_retries": 1}),
        ({"xy_stuck_on_move": 2, "xy_stuck_count": 1}, {"xy_timeout_retries": 1}),
        ({"snap_error_on_frame": 2, "snap_error_count": 2}, {"snap_error_retries": 2}),
        ({"snap_hang_on_frame": 3, "snap_hang_count": 1}, {"snap_timeout_retries": 1}),
        ({"snap_fail_on_frame": 4, "snap_fail_count": 1}, {"snap_timeout_retries": 1}),
        ({"corrupt_on_frame": 2, "corrupt_count": 1}, {"corrupt_frame_retries": 1}),
        (
            {"corrupt_on_frame": 1, "corrupt_count": 2, "corrupt_kind": "truncated"},
            {"corrupt_frame_retries": 2},
        ),
        (
            {"corrupt_on_frame": 4, "corrupt_count": 1, "corrupt_kind": "saturated"},
            {"corrupt_frame_retries": 1},
        ),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else v,
)
def test_a_transient_fault_is_retried_and_the_scan_completes(scanned, faults, counts):
    s = scanned({**faults, "snap_hang_s": 0.05})
    outcome = s.run()
    assert_complete(s, outcome)
    assert outcome.faults == counts
    settings_json = rows(s.db, "SELECT settings_json FROM scans")[0][0]
    assert '"faults"' in settings_json  # recorded with the scan in the catalogue


def test_a_transient_focus_fault_is_retried(scanned):
    s = scanned({"z_fail_on_move": 2, "z_fail_count": 1})
    request = replace(REQUEST, z_um=5.0)  # every tile moves Z
    outcome = s.run(request)
    assert_complete(s, outcome)
    assert outcome.faults == {"z_retries": 1}


def test_a_permanent_focus_fault_fails_the_scan(scanned):
    s = scanned({"z_fail_on_move": 3})
    outcome = s.run(replace(REQUEST, z_um=5.0))
    assert_failed(s, outcome, "Z: move to z 5.00 um failed: focus drive error", "(z) at tile")


def test_a_stalled_move_is_sent_again_and_the_tile_is_taken_where_planned(scanned):
    s = scanned({"xy_stall_on_move": 2, "xy_stall_count": 1})
    outcome = s.run()
    assert_complete(s, outcome)
    plan = s.runner.plan(REQUEST)
    got = rows(s.db, "SELECT x_um, y_um FROM tiles ORDER BY tile_index")
    assert np.allclose(got, [tuple(c) for c in plan.centres], atol=0.01)


# -- permanent faults + bounded retry: failed, naming device, fault, tile, retries --------
@pytest.mark.parametrize(
    ("faults", "parts"),
    [
        ({"xy_fail_on_move": 2}, ["XY: move to", "XY stage timeout", "(xy_move) at tile 1"]),
        ({"xy_stuck_on_move": 3}, ["XY: wait for the move to", "(xy_timeout) at tile 2"]),
        ({"snap_error_on_frame": 2}, ["Camera: snap failed: camera error", "(snap_error)"]),
        ({"snap_fail_on_frame": 3}, ["Camera: snap failed: camera timeout", "(snap_timeout)"]),
        ({"corrupt_on_frame": 4}, ["Camera: corrupt frame: every pixel is 0", "(corrupt_frame)"]),
    ],
)
def test_a_permanent_fault_fails_the_scan_after_the_bounded_retries(scanned, faults, parts):
    s = scanned({**faults, "snap_hang_s": 0.05})
    outcome = s.run()
    assert_failed(s, outcome, *parts, "2 retries made")
    kind = next(p for p in parts if p.startswith("(")).split(")")[0][1:]
    assert outcome.faults[f"{kind}_retries"] == 2


def test_policy_fail_fails_at_once_without_retrying(scanned):
    s = scanned(
        {"snap_error_on_frame": 2, "snap_error_count": 1}, policy(snap_error={"action": "fail"})
    )
    outcome = s.run()
    assert_failed(s, outcome, "camera error", "at tile 1", "policy 'fail': no retry")
    assert outcome.faults == {}
    assert s.tiles() == [0]


def test_a_heal_later_than_the_budget_still_fails(scanned):
    s = scanned({"xy_fail_on_move": 2, "xy_fail_count": 3}, policy(xy_move={"max_retries": 2}))
    assert_failed(s, s.run(), "(xy_move) at tile 1", "2 retries made")


# -- rehome -------------------------------------------------------------------------------
def test_rehome_cures_a_stage_stuck_until_homed(scanned):
    faults = {"xy_stuck_on_move": 2, "xy_fault_until_homed": True}
    s = scanned(faults, policy(xy_timeout={"action": "rehome", "max_retries": 1}))
    outcome = s.run()
    assert_complete(s, outcome)
    assert outcome.faults == {"xy_timeout_retries": 1, "rehomes": 1}
    assert s.mic.world.xy_homes == 1
    # Homed, then back to the target: the home and every move lay inside the limits.
    assert ("xy", (0.0, 0.0)) in s.mic.world.commanded
    assert all(LIMITS.contains_xy(*t) for k, t in s.mic.world.commanded if k == "xy")


def test_retrying_does_not_cure_a_stage_that_needs_homing(scanned):
    faults = {"xy_stuck_on_move": 2, "xy_fault_until_homed": True}
    s = scanned(faults, policy(xy_timeout={"action": "retry", "max_retries": 2}))
    assert_failed(s, s.run(), "(xy_timeout) at tile 1", "2 retries made")
    assert s.mic.world.xy_homes == 0


def test_rehome_on_a_failed_move_homes_then_sends_the_move_again(scanned):
    s = scanned({"xy_fail_on_move": 3, "xy_fail_count": 1}, policy(xy_move={"action": "rehome"}))
    outcome = s.run()
    assert_complete(s, outcome)
    assert outcome.faults == {"xy_move_retries": 1, "rehomes": 1}


def test_rehome_is_refused_when_home_lies_outside_the_travel_limits(scanned):
    outside = FaultPolicy.model_validate(
        {
            **policy().model_dump(),
            "xy_timeout": {"action": "rehome", "retry_delay_s": 0},
            "home_xy_um": (-5000.0, 0.0),
        }
    )
    # Refused with the config, when the microscope opens...
    with pytest.raises(HardwareError, match=r"home_xy_um = \[-5000.0, 0.0\] lies outside"):
        sim_microscope(LIMITS, hardware=hardware(outside))
    # ... and, should such a policy get in anyway, by the re-home itself: nothing commanded.
    s = scanned({"xy_stuck_on_move": 2, "xy_fault_until_homed": True})
    s.mic.faults = FaultRunner(outside)
    outcome = s.run()
    assert_failed(s, outcome, "re-homing failed", "re-homing refused", "outside the travel")
    assert s.mic.world.xy_homes == 0
    assert all(LIMITS.contains_xy(*t) for k, t in s.mic.world.commanded if k == "xy")


def test_rehome_is_only_accepted_for_the_xy_kinds():
    with pytest.raises(ValueError, match="snap_error: action 'rehome' only applies"):
        FaultPolicy.model_validate({"snap_error": {"action": "rehome"}})


# -- corrupt frames -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("black", "every pixel is 0"),
        ("truncated", "are all zero (a partial transfer)"),
        ("saturated", "saturated at 255"),
    ],
)
def test_the_frame_check_knows_what_faulty_cameras_deliver(kind, problem):
    mic = sim_microscope(faults={"corrupt_on_frame": 2, "corrupt_count": 1, "corrupt_kind": kind})
    try:
        mic.faults = FaultRunner(FaultPolicy.failing())
        assert frame_problem(mic.snap_image(), mic.frame_shape) is None
        with pytest.raises(
            FaultError, match=f"Camera: corrupt frame: .*{re.escape(problem)}"
        ) as err:
            mic.snap_image()
        assert err.value.kind == "corrupt_frame"
        assert frame_problem(mic.snap_image(), mic.frame_shape) is None  # the next is good
    finally:
        mic.close()


def test_frames_off_the_chip_and_odd_shapes():
    mic = sim_microscope()
    try:
        for where in [(-800.0, -800.0), (5300.0, 2500.0), (2500.0, 2500.0)]:
            mic.move_xy(*where)  # beyond the chip edge: the holder, dark but not blank
            assert frame_problem(mic.snap_image(), mic.frame_shape) is None
        good = mic.snap_image()
    finally:
        mic.close()
    assert "expected (height, width) = (768, 1024)" in frame_problem(good[:500], (768, 1024))
    assert "dtype uint8, expected uint16" in frame_problem(good, dtype=np.uint16)
    assert "non-finite" in frame_problem(np.full((64, 64), np.nan))
    assert frame_problem(good.astype(np.float32)) is None


def test_checking_frames_can_be_turned_off(scanned):
    s = scanned({"corrupt_on_frame": 2, "corrupt_count": 1}, check_frames=False)
    outcome = s.run()
    assert outcome.status == "completed" and outcome.faults == {}
    assert frame_problem(s.frames[1]) is not None  # what the check is there to catch


# -- the invariant: completed means every planned tile is in the catalogue ---------------
class DroppingWriter(CatalogueWriter):
    """A catalogue writer that loses two tiles without saying so (a bug, a write a layer
    below swallowed): it answers as if it had written them. The scan must not be reported
    complete."""

    def record_tile(self, *, tile: TileResult, **kw: Any) -> tuple[list[dict], list[dict]]:
        if tile.index in (1, 3):
            fake = [{"id": -k - 1, "flake_class": h.flake_class} for k, h in enumerate(kw["hits"])]
            return fake, []
        return super().record_tile(tile=tile, **kw)


def test_a_scan_with_tiles_missing_from_the_catalogue_is_not_completed(tmp_path):
    engine = open_database(sqlite_url(tmp_path / "s.db"))
    mic = sim_microscope(LIMITS)
    try:
        runner = scan_runner(mic, engine, tmp_path / "thumbs")
        runner.writer = DroppingWriter(engine)
        plan = runner.plan(REQUEST)
        outcome = runner.run(runner.open_scan(REQUEST, plan, {}), REQUEST, plan)
        assert outcome.status == "failed"
        assert outcome.reason == "2 tiles missing from the catalogue: indices 1, 3"
        assert rows(tmp_path / "s.db", "SELECT status FROM scans") == [("failed",)]
    finally:
        mic.close()
        engine.dispose()


# -- property: no fault schedule ends in a completed scan with tiles missing -------------
window = st.none() | st.integers(1, 6)
count = st.none() | st.integers(1, 3)


@st.composite
def schedules(draw: st.DrawFn) -> dict:
    f: dict[str, Any] = {"snap_hang_s": 0.0}
    for start, length in [
        ("xy_fail_on_move", "xy_fail_count"),
        ("xy_stall_on_move", "xy_stall_count"),
        ("xy_stuck_on_move", "xy_stuck_count"),
        ("snap_fail_on_frame", "snap_fail_count"),
        ("snap_error_on_frame", "snap_error_count"),
        ("corrupt_on_frame", "corrupt_count"),
    ]:
        if draw(st.booleans()):
            f[start], f[length] = draw(st.integers(1, 6)), draw(count)
    f["corrupt_kind"] = draw(st.sampled_from(["black", "truncated", "saturated"]))
    f["xy_fault_until_homed"] = draw(st.booleans())
    return f


@st.composite
def policies(draw: st.DrawFn) -> FaultPolicy:
    kinds = {}
    for kind in ("xy_move", "xy_timeout", "z", "snap_error", "snap_timeout", "corrupt_frame"):
        actions = ["retry", "fail"] + (["rehome"] if kind.startswith("xy") else [])
        kinds[kind] = {
            "action": draw(st.sampled_from(actions)),
            "max_retries": draw(st.integers(0, 3)),
        }
    return policy(**kinds)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ScanRunner, Path]]:
    tmp = tmp_path_factory.mktemp("prop")
    engine = open_database(sqlite_url(tmp / "s.db"))
    mic = sim_microscope(LIMITS, hardware=hardware())
    yield mic, scan_runner(mic, engine, tmp / "thumbs"), tmp / "s.db"
    mic.close()
    engine.dispose()


@given(faults=schedules(), pol=policies())
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_no_fault_schedule_ends_in_a_completed_scan_with_tiles_missing(shared, faults, pol):
    mic, runner, db = shared
    w = mic.world
    w.faults = FaultSpec.model_validate(faults)
    w.xy_moves = w.frames = 0
    w.xy_fault = w.xy_latched = None
    w.xy_fault_spent = False
    mic.core.stop(mic.xy_label)
    mic.faults = FaultRunner(pol)
    plan = runner.plan(REQUEST)
    scan_id = runner.open_scan(REQUEST, plan, {})
    outcome = runner.run(scan_id, REQUEST, plan)
    event(f"scan {outcome.status}")
    stored = {i for (i,) in rows(db, "SELECT tile_index FROM tiles WHERE scan_id = ?", scan_id)}
    (status,) = rows(db, "SELECT status FROM scans WHERE id = ?", scan_id)[0]
    assert status == outcome.status
    if outcome.status == "completed":
        assert stored == set(range(plan.n_tiles))
    else:
        assert outcome.status == "failed" and outcome.reason
        assert len(stored) == outcome.tiles_done < plan.n_tiles
    assert all(LIMITS.contains_xy(*t) for k, t in w.commanded if k == "xy")


# -- park ---------------------------------------------------------------------------------
def test_park_lifts_z_to_the_top_of_travel_then_moves_xy_to_the_park_position():
    park = ParkConfig(xy_um=(100.0, 200.0))
    mic = sim_microscope(LIMITS, hardware=hardware(park=park))
    try:
        mic.move_xy(3000.0, 3000.0)
        mic.move_z(10.0)
        before = len(mic.world.commanded)
        done = mic.park()
        assert done["z"] == LIMITS.z_max_um and done["xy"] == [100.0, 200.0]
        assert done["problems"] == []
        assert mic.z() == pytest.approx(LIMITS.z_max_um)
        assert mic.position() == pytest.approx((100.0, 200.0))
        # Z first (away from the chip), then XY; nothing outside the limits.
        assert list(mic.world.commanded)[before:] == [("z", (200.0,)), ("xy", (100.0, 200.0))]
    finally:
        mic.close()


def test_park_at_a_configured_plane_and_xy_left_alone_by_default():
    mic = sim_microscope(LIMITS, hardware=hardware(park=ParkConfig(z_um=80.0)))
    try:
        mic.move_xy(2500.0, 2600.0)
        done = mic.park()
        assert (done["z"], done["xy"]) == (80.0, None)
        assert mic.position() == pytest.approx((2500.0, 2600.0))
    finally:
        mic.close()


@pytest.mark.parametrize(
    ("park", "message"),
    [
        ({"z_um": 500.0}, r"park.z_um = 500.0 lies outside the Z travel limits \[-50.0, 200.0\]"),
        ({"z_um": -60.0}, "park.z_um = -60.0 lies outside"),
        ({"xy_um": (9000.0, 0.0)}, r"park.xy_um = \[9000.0, 0.0\] lies outside the XY travel"),
    ],
)
def test_a_park_position_outside_the_travel_limits_is_refused(park, message):
    with pytest.raises(ValueError, match=message):
        ParkConfig(**park).check(LIMITS)
    with pytest.raises(HardwareError, match=message):
        sim_microscope(LIMITS, hardware=hardware(park=ParkConfig(**park)))


def test_park_on_a_stage_in_fault_does_not_raise_and_says_what_it_did():
    park = ParkConfig(xy_um=(100.0, 200.0))
    mic = sim_microscope(
        LIMITS,
        faults={"xy_stuck_on_move": 2},
        hardware=hardware(policy(xy_timeout={"action": "fail"}), park=park),
    )
    try:
        mic.move_xy(1000.0, 1000.0)
        with pytest.raises(FaultError):
            mic.move_xy(2000.0, 1000.0)  # stuck busy: the move never reports done
        done = mic.park()
        assert done["z"] == LIMITS.z_max_um  # Z is fine and goes up
        assert done["xy"] is None
        assert any("XY not parked" in p and "wait for device" in p for p in done["problems"])
    finally:
        mic.close()


def test_park_after_a_cancelled_scan(scanned):
    s = scanned({}, park=ParkConfig(xy_um=(0.0, 0.0)))
    plan = s.runner.plan(REQUEST)
    scan_id = s.runner.open_scan(REQUEST, plan, {})
    s.mic.core.mda.events.frameReady.connect(lambda *_: s.runner.cancel())
    outcome = s.runner.run(scan_id, REQUEST, plan)
    assert outcome.status == "stopped"
    done = s.mic.park()
    assert done["problems"] == [] and done["xy"] == [0.0, 0.0]
    assert s.mic.z() == pytest.approx(LIMITS.z_max_um)


# -- the Prior ProScan on a pty: a serial link lost mid-scan ------------------------------
def prior_microscope(tmp_path: Path, port: str, pol: FaultPolicy) -> Microscope:
    cfg = write_cfg(tmp_path, port)
    adapters = mm_test_adapters.device_adapter_path()
    hw = HardwareConfig(
        backend="mmconfig", mm_config=cfg, adapter_paths=[adapters], fault_policy=pol
    )
    limits = TravelLimits(x_min_um=-100, x_max_um=5000, y_min_um=-100, y_max_um=5000)
    return open_microscope(hw, ObjectiveConfig(pixel_size_um=1.0), limits)


def test_a_serial_link_lost_mid_scan_fails_it_naming_the_port(tmp_path):
    engine = open_database(sqlite_url(tmp_path / "s.db"))
    with ProScanSimulator(top_speed_um_s=20000.0, speed_percent=100) as sim:
        mic = prior_microscope(tmp_path, sim.port, policy(xy_move={"max_retries": 2}))
        try:
            runner = scan_runner(mic, engine, tmp_path / "thumbs")
            request = ScanRequest(region_um=(0.0, 0.0, 1200.0, 900.0), overlap_pct=10, chip_id="p")
            plan = runner.plan(request)
            sim.inject("drop", after="G", times=2)  # the line dies after the 2nd tile's move
            outcome = runner.run(runner.open_scan(request, plan, {}), request, plan)
            assert outcome.status == "failed"
            assert f"XY on {sim.port}: serial link lost" in outcome.reason
            assert "at tile" in outcome.reason
            assert rows(tmp_path / "s.db", "SELECT status FROM scans") == [("failed",)]
            n = len(rows(tmp_path / "s.db", "SELECT tile_index FROM tiles"))
            assert n == outcome.tiles_done < plan.n_tiles
            # A DeviceError for whoever calls the microscope directly, naming the port too.
            with pytest.raises(DeviceError, match=f"XY on {sim.port}: serial link lost"):
                mic.move_xy(10.0, 10.0)
        finally:
            mic.close()
    engine.dispose()


def test_a_serial_link_that_stops_answering_and_comes_back_is_retried(tmp_path):
    engine = open_database(sqlite_url(tmp_path / "s.db"))
    with ProScanSimulator(top_speed_um_s=20000.0, speed_percent=100) as sim:
        mic = prior_microscope(tmp_path, sim.port, policy())
        try:
            runner = scan_runner(mic, engine, tmp_path / "thumbs")
            request = ScanRequest(region_um=(0.0, 0.0, 1200.0, 900.0), overlap_pct=10, chip_id="p")
            plan = runner.plan(request)
            # After the 2nd tile's move, the controller misses one status query ('$').
            sim.inject("silent", after="G", times=2, lasting=1)
            outcome = runner.run(runner.open_scan(request, plan, {}), request, plan)
            assert (outcome.status, outcome.reason) == ("completed", "")
            assert outcome.faults == {"xy_timeout_retries": 1}
            n = len(rows(tmp_path / "s.db", "SELECT tile_index FROM tiles"))
            assert n == plan.n_tiles
            assert "I" in sim.received  # stopped, then sent again
        finally:
            mic.close()
    engine.dispose()


def test_rehome_on_the_prior_stage_fails_saying_it_cannot_home(tmp_path):
    with ProScanSimulator(top_speed_um_s=20000.0, speed_percent=100) as sim:
        mic = prior_microscope(tmp_path, sim.port, policy(xy_move={"action": "rehome"}))
        try:
            sim.reply_error(18, on="G", times=1)  # QUEUE FULL, once
            with pytest.raises(FaultError, match=r"re-homing failed: .*SIS") as err:
                mic.move_xy(100.0, 100.0)
            assert err.value.kind == "xy_move" and "E,18" in str(err.value)
        finally:
            mic.close()
