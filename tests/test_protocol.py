"""Control envelope, event envelope, state machine, scan plans."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from flakescan.daemon.events import EventPublisher
from flakescan.daemon.protocol import METHODS, ProtocolError, parse_request
from flakescan.daemon.scan_plan import ScanPlan
from flakescan.daemon.state import DaemonState, InvalidTransition, StateMachine
from flakescan.hardware.config import TravelLimits
from flakescan.hardware.errors import TravelLimitError


def test_requests_are_validated_per_method():
    method, params = parse_request(b'{"method": "scan_start", "params": {"overlap_pct": 20}}')
    assert method == "scan_start" and params.overlap_pct == 20
    method, params = parse_request(b'{"method": "status"}')
    assert method == "status"
    with pytest.raises(ProtocolError, match="flake_id = 0"):
        parse_request(b'{"method": "goto_flake", "params": {"flake_id": 0}}')
    with pytest.raises(ProtocolError, match="'params' must be an object"):
        parse_request(b'{"method": "status", "params": [1]}')
    with pytest.raises(ProtocolError, match="'method' must be a string"):
        parse_request(b'{"params": {}}')
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_request(b"\xff\xfe")
    assert {"status", "scan_start", "scan_stop", "goto_flake", "shutdown"} <= set(METHODS)


def test_events_are_numbered_and_go_out_as_topic_and_json():
    ctx = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt_string(zmq.SUBSCRIBE, "")
        publisher = EventPublisher(pub, "scope-7")
        # Wait until the subscription has reached the publisher.
        for _ in range(100):
            publisher.publish("daemon.heartbeat", {})
            if sub.poll(50):
                sub.recv_multipart()
                break
        while sub.poll(100):
            sub.recv_multipart()
        first = publisher.publish("flake.found", {"id": 1})["seq"]
        publisher.publish("scan.finished", {"scan_id": 2})
        got = [sub.recv_multipart() for _ in range(2)]
    finally:
        pub.close()
        sub.close()
    assert [t for t, _ in got] == [b"flake.found", b"scan.finished"]
    bodies = [json.loads(b) for _, b in got]
    assert [b["seq"] for b in bodies] == [first, first + 1]
    assert bodies[0]["instrument"] == "scope-7" and bodies[0]["data"] == {"id": 1}
    assert bodies[0]["time"].endswith("Z")
    with pytest.raises(ValueError, match="unknown event topic"):
        publisher.publish("flake.lost", {})


def test_state_machine_allows_only_the_table():
    seen = []
    sm = StateMachine(on_change=lambda a, b, r: seen.append((a, b)))
    with pytest.raises(InvalidTransition):
        sm.set(DaemonState.STOPPING)
    sm.set(DaemonState.SCANNING)
    sm.set(DaemonState.ERROR, "stage fault")
    assert sm.reason == "stage fault"
    sm.set(DaemonState.SCANNING)
    sm.set(DaemonState.STOPPING)
    with pytest.raises(InvalidTransition):
        sm.set(DaemonState.SCANNING)
    sm.set(DaemonState.IDLE)
    assert seen[0] == (DaemonState.IDLE, DaemonState.SCANNING)
    assert len(seen) == 5


def test_scan_plan_covers_the_region_in_snake_order():
    plan = ScanPlan((0, 0, 2000, 1500), (584.0, 438.0), 10.0)
    c = plan.centres
    assert plan.n_tiles == len(list(plan.sequence)) == 4 * 4
    # Fields of view cover the region's corners.
    assert c[:, 0].min() - 292 <= 0 and c[:, 0].max() + 292 >= 2000
    assert c[:, 1].min() - 219 <= 0 and c[:, 1].max() + 219 >= 1500
    # Snake: consecutive tiles are neighbours, never a jump back across the chip.
    steps = np.abs(np.diff(c, axis=0)).max(axis=1)
    assert steps.max() <= 584 * 0.9 + 1e-6


def test_the_tile_that_owns_a_point_sees_it_and_owns_its_grid_cell():
    plan = ScanPlan((0, 0, 2000, 1500), (584.0, 438.0), 10.0)
    rng = np.random.default_rng(0)
    sx, sy = plan.step_um
    for x, y in rng.uniform((0, 0), (2000, 1500), size=(500, 2)):
        cx, cy = plan.centres[plan.owner_of(x, y)]
        assert abs(x - cx) <= 584 / 2 and abs(y - cy) <= 438 / 2  # the owner sees it
        if 292 < x < 2000 - 292 and 219 < y < 1500 - 219:  # inside: the grid's cell
            assert abs(x - cx) <= sx / 2 + 1e-6 and abs(y - cy) <= sy / 2 + 1e-6


def test_plans_outside_the_travel_limits_are_refused():
    plan = ScanPlan((0, 0, 2000, 1500), (584.0, 438.0), 10.0)
    plan.check_limits(TravelLimits())
    with pytest.raises(TravelLimitError, match="tile 0 at"):
        plan.check_limits(TravelLimits(x_min_um=300))
    with pytest.raises(TravelLimitError, match="z_um"):
        ScanPlan((0, 0, 100, 100), (584.0, 438.0), 10.0, z_um=900).check_limits(TravelLimits())
