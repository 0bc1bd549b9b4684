"""Events under load: late joiners, subscribers that stop reading, 10,000 events a minute.

Real PUB/SUB sockets on loopback; the reading dashboard is a separate process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import zmq

from flakescan.daemon.client import EventSubscriber
from flakescan.daemon.events import EventPublisher

from .conftest import free_port
from .test_daemon_e2e import REGION, collect_scan, db_flakes


def test_a_late_dashboard_rebuilds_the_scan_from_a_snapshot_and_the_seq(start_daemon):
    d = start_daemon({"scan": {"region_um": REGION}})
    with EventSubscriber(d.events, ("tile.processed",)) as early:
        scan_id = d.client.request("scan_start")["scan_id"]
        for _ in range(3):  # the dashboard opens three tiles into the scan
            assert early.next(timeout_s=60) is not None
    with EventSubscriber(d.events, heartbeats=True) as late:  # subscribe, then ask
        snap = d.client.request("snapshot")
        assert snap["success"] and snap["state"] == "scanning" and snap["scan_id"] == scan_id
        assert snap["seq"] >= 1 and len(snap["tiles"]) >= 3
        events = collect_scan(late, scan_id)
    after = [e for e in events if e["seq"] > snap["seq"]]
    # the stream goes on from the snapshot without a gap
    assert [e["seq"] for e in after] == list(range(snap["seq"] + 1, after[-1]["seq"] + 1))
    assert late.missed == 0
    # snapshot + later events = the catalogue: every tile once, every flake as it is there
    flakes = {f["id"]: f for f in snap["flakes"]}
    tiles = {t["tile_index"] for t in snap["tiles"]}
    for e in after:
        if e["topic"] in ("flake.found", "flake.updated"):
            flakes[e["data"]["id"]] = {**flakes.get(e["data"]["id"], {}), **e["data"]}
        elif e["topic"] == "tile.processed":
            tiles.add(e["data"]["tile_index"])
    finished = after[-1]
    assert finished["topic"] == "scan.finished" and finished["data"]["status"] == "completed"
    assert len(tiles) == finished["data"]["tiles_planned"]
    stored = db_flakes(d.db_path, scan_id)
    assert set(flakes) == set(stored) and len(stored) > 0
    for fid, row in stored.items():
        assert flakes[fid]["area_um2"] == row["area_um2"]
    assert d.stop() == 0


def test_a_subscriber_that_stops_reading_never_holds_up_a_scan(start_daemon):
    d = start_daemon({"scan": {"region_um": REGION}, "zmq": {"events_queue": 100}})
    stalled = zmq.Context.instance().socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt_string(zmq.SUBSCRIBE, "")
    stalled.connect(d.events)
    try:
        with EventSubscriber(d.events, heartbeats=True) as reader:
            time.sleep(0.5)  # the stalled one is surely connected; it never reads
            scan_id = d.client.request("scan_start")["scan_id"]
            events = collect_scan(reader, scan_id)
        assert events[-1]["data"]["status"] == "completed"
        assert reader.missed == 0
        assert d.client.request("status")["state"] == "idle"
    finally:
        stalled.close()
    assert d.stop() == 0


_READER = textwrap.dedent(
    """
    import json, sys
    from flakescan.daemon.client import EventSubscriber
    seqs = []
    with EventSubscriber(sys.argv[1], heartbeats=False) as sub:
        print("ready", flush=True)
        for ev in sub:
            if ev["topic"] == "scan.finished":
                break
            seqs.append(ev["seq"])
            json.dumps(ev["data"])  # a dashboard looks at every event
    print(json.dumps({"seqs": seqs, "missed": sub.missed}), flush=True)
    """
)


def test_ten_thousand_events_a_minute_reach_a_reading_client_in_full(tmp_path: Path):
    """10,000 flake-sized events at 6x the target rate (60,000/min), with a subscriber that
    never reads on the same socket: the reader gets every one in order; the stalled one is
    dropped (it got fewer), and publishing never waited for it."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 10_000)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    events = EventPublisher(pub, "load-1")
    stalled = zmq.Context.instance().socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 10)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt_string(zmq.SUBSCRIBE, "")
    stalled.connect(endpoint)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, endpoint], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # heartbeats until the reader says it is subscribed
            events.publish("daemon.heartbeat", {"state": "idle"})
            assert time.monotonic() < deadline, "the reader never connected"
            if _ready(reader):
                break
        outline = [[round(i * 0.37, 2), round(i * 0.11, 2)] for i in range(120)]
        n, rate_per_s = 10_000, 1000.0
        first = events.seq + 1
        t0 = time.monotonic()
        slowest = 0.0
        for i in range(n):
            target = t0 + i / rate_per_s
            while (now := time.monotonic()) < target:
                time.sleep(min(0.002, target - now))
            t = time.perf_counter()
            events.publish(
                "flake.found",
                {"id": i + 1, "area_um2": 120.5 + i, "outline_um": outline, "scan_id": 1},
            )
            slowest = max(slowest, time.perf_counter() - t)
        events.publish("scan.finished", {"status": "completed"})
        elapsed = time.monotonic() - t0
        out, _ = reader.communicate(timeout=120)
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        if reader.poll() is None:
            reader.kill()
    got = [s for s in result["seqs"] if s >= first]
    assert got == list(range(first, first + n))  # all, in order, none twice
    assert result["missed"] == 0
    stalled_got = 0
    while stalled.poll(0):
        stalled.recv_multipart()
        stalled_got += 1
    stalled.close()
    pub.close()
    assert stalled_got < n  # dropped for it, not waited for
    print(
        f"\n{n} events in {elapsed:.1f} s ({n / elapsed * 60:,.0f}/min); slowest publish "
        f"{slowest * 1e3:.2f} ms; the stalled subscriber got {stalled_got}"
    )


def _ready(proc: subprocess.Popen) -> bool:
    """Non-blocking: has the reader printed `ready`?"""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if sel.select(timeout=0.05):
            return proc.stdout.readline().strip() == "ready"
        return False
    finally:
        sel.close()
