"""End to end: the daemon as a subprocess, real ZMQ sockets, a real SQLite file.

A scan of the simulated chip is judged against the simulator's ground truth; faults,
signals, bad configs and bad messages are checked for what the user sees.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shapely.geometry import Point

from flakescan.daemon.client import EventSubscriber
from flakescan.daemon.config import load_config
from flakescan.simulators.chip import generate_chip
from flakescan.simulators.evaluate import match_hits

from .conftest import free_port

pytestmark = pytest.mark.slow

# 2.5 x 2.0 mm of the default chip (seed 1): 25 tiles, about two dozen findable flakes.
REGION = [1000.0, 1000.0, 3500.0, 3000.0]


def collect_scan(sub: EventSubscriber, scan_id: int, timeout_s: float = 120) -> list[dict]:
    """All events (heartbeats included) until the scan's finished/failed event."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = sub.next(timeout_s=10)
        assert ev is not None, "the daemon went silent"
        events.append(ev)
        if ev["topic"] in ("scan.finished", "scan.failed") and ev["data"]["scan_id"] == scan_id:
            return events
    raise AssertionError("scan did not end in time")


def follow_tiles(sub: EventSubscriber, tiles: int, found: set[int]) -> None:
    """Read events until `tiles` tiles were processed, collecting flake.found ids."""
    done = 0
    while done < tiles:
        ev = sub.next(timeout_s=30)
        assert ev is not None, "the daemon went silent"
        done += ev["topic"] == "tile.processed"
        if ev["topic"] == "flake.found":
            found.add(ev["data"]["id"])


def db_flakes(db_path, scan_id: int) -> dict[int, dict]:
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM flakes WHERE scan_id = ?", (scan_id,)).fetchall()
        return {r["id"]: dict(r) for r in rows}
    finally:
        con.close()


def db_scan(db_path, scan_id: int) -> dict:
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    try:
        return dict(con.execute("SELECT * FROM scans WHERE id = ?", (scan_id,)).fetchone())
    finally:
        con.close()


def test_scan_finds_the_thin_flakes_of_the_chip(start_daemon):
    d = start_daemon({"scan": {"region_um": REGION}})
    with EventSubscriber(d.events, heartbeats=True) as sub:
        answer = d.client.request("scan_start", {"chip_id": "sim-chip-1"})
        assert answer["success"], answer
        scan_id = answer["scan_id"]
        events = collect_scan(sub, scan_id)

    # Every event numbered, none lost, in order.
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(e["instrument"] == "test-d" for e in events)
    topics = [e["topic"] for e in events if e["topic"] != "daemon.heartbeat"]
    assert "scan.started" in topics and topics[-1] == "scan.finished"
    finished = events[-1]["data"]
    assert finished["status"] == "completed"
    assert topics.count("tile.processed") == answer["tiles"] == finished["tiles_done"]

    # Database rows are exactly the flakes the events announced, as last announced
    # (flake.updated when a later tile saw more of a flake larger than the overlap).
    found = {e["data"]["id"]: e["data"] for e in events if e["topic"] == "flake.found"}
    for e in events:
        if e["topic"] == "flake.updated":
            assert e["data"]["id"] in found
            found[e["data"]["id"]] = e["data"]
    rows = db_flakes(d.db_path, scan_id)
    assert set(rows) == set(found)
    for fid, row in rows.items():
        ev = found[fid]
        assert row["x_um"] == pytest.approx(ev["x_um"]) and row["y_um"] == pytest.approx(ev["y_um"])
        assert row["flake_class"] == ev["flake_class"]
        assert row["chip_id"] == "sim-chip-1"
    assert db_scan(d.db_path, scan_id)["status"] == "completed"

    # Against the simulator's ground truth.
    cfg = load_config(d.config_path)
    chip = generate_chip(cfg.simulator.chip, cfg.simulator.seed)
    report = match_hits(
        chip,
        [(r["x_um"], r["y_um"]) for r in rows.values()],
        tuple(REGION),
        min_area_um2=cfg.preselection.min_area_um2,
    )
    assert report.truth_total >= 15, "the region should hold enough flakes to judge"
    missed = f"found {report.truth_found}/{report.truth_total}: {report.missed}"
    assert report.recall >= 0.9, missed
    # A flake in the overlap of two tiles, or larger than it, is logged once: no flake has
    # hits from two tiles. (One tile may show a thin flake in two pieces, parted by the
    # thick crystal it hangs from: two regions to look at.)
    tiles_of: dict[int, set[int]] = {}
    flake_of = {}
    for fid, r in rows.items():
        x, y = r["x_um"], r["y_um"]
        # The nearest flake: a concave flake's (or merged pieces') centroid may lie outside.
        near = [o for o in chip.query(x - 25, y - 25, x + 25, y + 25) if o.kind == "flake"]
        flake_of[fid] = min(near, key=lambda o: o.polygon.distance(Point(x, y))).id
        tiles_of.setdefault(flake_of[fid], set()).add(r["tile_id"])
    assert all(len(t) == 1 for t in tiles_of.values()), tiles_of
    # Every hit is a thin flake (no dirt, no residue, no thick crystal), and lies within one
    # flake radius of its centroid - unless the flake runs off the scanned area, where only
    # the part inside is seen; of a flake seen in pieces, its largest piece.
    assert all(report.hit_on_thin_flake), report.as_dict()
    largest = {}
    for fid, r in rows.items():
        best = largest.get(flake_of[fid])
        if best is None or r["area_um2"] > rows[best]["area_um2"]:
            largest[flake_of[fid]] = fid
    at_centroid = dict(zip(rows, report.hit_at_centroid, strict=True))
    for fid in largest.values():
        assert at_centroid[fid] or rows[fid]["touches_border"], rows[fid]

    # Drive back to a flake.
    fid = next(iter(rows))
    answer = d.client.request("goto_flake", {"flake_id": fid})
    assert answer["success"], answer
    assert answer["position_um"] == pytest.approx([rows[fid]["x_um"], rows[fid]["y_um"]], abs=0.01)
    assert d.stop() == 0


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ({"xy_fail_on_move": 6}, "XY stage timeout"),
        ({"snap_fail_on_frame": 4}, "camera timeout"),
    ],
)
def test_device_fault_fails_the_scan_and_keeps_earlier_hits(start_daemon, fault, expect):
    d = start_daemon({"scan": {"region_um": REGION}, "simulator": {"faults": fault}})
    with EventSubscriber(d.events) as sub:
        scan_id = d.client.request("scan_start")["scan_id"]
        events = collect_scan(sub, scan_id)
    failed = events[-1]
    assert failed["topic"] == "scan.failed"
    assert expect in failed["data"]["reason"]
    done = [e for e in events if e["topic"] == "tile.processed"]
    assert 0 < len(done) < failed["data"]["tiles_planned"]
    found = {e["data"]["id"] for e in events if e["topic"] == "flake.found"}
    assert set(db_flakes(d.db_path, scan_id)) == found
    scan = db_scan(d.db_path, scan_id)
    assert scan["status"] == "failed" and expect in scan["reason"]
    assert scan["tiles_done"] == len(done)
    status = d.client.request("status")
    assert status["success"] and status["state"] == "error" and expect in status["reason"]
    # From `error` a new scan may start (here it meets the same broken device).
    again = d.client.request("scan_start")
    assert again["success"] and again["scan_id"] == scan_id + 1
    assert d.stop() == 0


def test_bad_control_messages_get_reasons_and_the_daemon_stays_up(start_daemon):
    d = start_daemon()
    cases = [
        (b"not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"method": "fly"}', "unknown method 'fly'"),
        (b'{"method": "status", "extra": 1}', "unknown request keys"),
        (b'{"method": "scan_start", "params": {"overlap_pct": "lots"}}', "overlap_pct = 'lots'"),
        (b'{"method": "scan_start", "params": {"bogus": 1}}', "unknown parameter 'bogus'"),
        (b'{"method": "goto_flake", "params": {}}', "missing parameter 'flake_id'"),
        (b'{"method": "goto_flake", "params": {"flake_id": 12345}}', "no flake with id 12345"),
        (
            b'{"method": "scan_start", "params": {"region_um": [0, 0, 90000, 1000]}}',
            "outside the travel limits",
        ),
        (b'{"method": "scan_stop"}', "no scan to stop"),
        (
            b'{"method": "scan_start", "params": {"region_um": [0, 0, 5e6, 5e6]}}',
            "at most 100000 per scan",
        ),
        (b'{"method": "scan_start", "params": {"overlap_pct": NaN}}', "overlap_pct = nan"),
    ]
    for raw, reason in cases:
        answer = d.client.send_raw(raw)
        assert answer["success"] is False, raw
        assert reason in answer["msg"], (raw, answer["msg"])
    status = d.client.request("status")
    assert status["success"] and status["state"] == "idle"
    assert d.proc.poll() is None


def test_sigterm_mid_scan_keeps_every_hit_and_exits_zero(start_daemon):
    d = start_daemon({"scan": {"region_um": [500.0, 500.0, 4500.0, 4500.0]}})
    found: set[int] = set()
    with EventSubscriber(d.events) as sub:
        scan_id = d.client.request("scan_start")["scan_id"]
        follow_tiles(sub, 4, found)
        d.proc.send_signal(signal.SIGTERM)
        while (ev := sub.next(timeout_s=5)) is not None:
            if ev["topic"] == "flake.found":
                found.add(ev["data"]["id"])
    assert d.proc.wait(timeout=60) == 0
    scan = db_scan(d.db_path, scan_id)
    assert scan["status"] == "stopped"
    assert 4 <= scan["tiles_done"] < scan["tiles_planned"]
    assert set(db_flakes(d.db_path, scan_id)) == found
    assert sqlite3.connect(d.db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_bad_config_fails_at_start_naming_key_and_value(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[objective]\npixel_size_um = -0.5\n[scan]\noverlap_pct = 150\n")
    run = subprocess.run(
        [sys.executable, "-m", "flakescan.daemon", "daemon", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "[objective] pixel_size_um = -0.5" in run.stderr
    assert "[scan] overlap_pct = 150" in run.stderr


def test_status_reports_the_hardware_and_state(start_daemon):
    d = start_daemon()
    status = d.client.request("status")
    assert status["state"] == "idle"
    assert status["hardware"]["pixel_size_um"] == pytest.approx(0.57)
    assert status["hardware"]["fov_um"] == pytest.approx([1024 * 0.57, 768 * 0.57], abs=0.01)
    classifier = status["models"]["classifier"]
    assert classifier["name"] == "flake_classifier_cnn4" and len(classifier["sha256"]) == 64
    # backend = "auto" in service.toml: this machine has no GPU, and status says so.
    assert (classifier["backend"], classifier["device"]) == ("onnxruntime", "cpu")
    assert classifier["selected_by"] == "auto" and classifier["passed_over"]
    assert d.client.request("shutdown")["success"]
    assert d.proc.wait(timeout=30) == 0


def test_stop_mid_scan_and_no_stage_moves_while_scanning(start_daemon):
    d = start_daemon({"scan": {"region_um": [500.0, 500.0, 4500.0, 4500.0]}})
    with EventSubscriber(d.events) as sub:
        scan_id = d.client.request("scan_start")["scan_id"]
        follow_tiles(sub, 1, set())
        refused = d.client.request("goto_flake", {"flake_id": 1})
        assert not refused["success"] and "cannot move the stage while scanning" in refused["msg"]
        assert d.client.request("scan_start")["msg"] == "cannot start a scan while scanning"
        stop = d.client.request("scan_stop")
        assert stop["success"], stop
        events = collect_scan(sub, scan_id)
    finished = events[-1]
    assert finished["topic"] == "scan.finished" and finished["data"]["status"] == "stopped"
    assert finished["data"]["tiles_done"] < finished["data"]["tiles_planned"]
    status = d.client.request("status")
    assert status["state"] == "idle" and status["last_scan"]["status"] == "stopped"
    assert db_scan(d.db_path, scan_id)["status"] == "stopped"
    assert "no scan to stop" in d.client.request("scan_stop")["msg"]


def test_kill_9_keeps_every_logged_hit_and_the_restart_marks_the_scan_interrupted(start_daemon):
    extra = {"scan": {"region_um": [500.0, 500.0, 4500.0, 4500.0]}}
    d = start_daemon(extra)
    found: set[int] = set()
    with EventSubscriber(d.events) as sub:
        scan_id = d.client.request("scan_start")["scan_id"]
        follow_tiles(sub, 5, found)
        d.proc.kill()
    d.proc.wait(timeout=30)
    assert found, "the scan should have logged hits before the kill"
    assert db_scan(d.db_path, scan_id)["status"] == "running"  # nobody could close it
    assert found <= set(db_flakes(d.db_path, scan_id))  # every published hit has its row
    again = start_daemon(extra)  # same name: same state directory and database
    scan = db_scan(again.db_path, scan_id)
    assert scan["status"] == "interrupted" and scan["tiles_done"] >= 5
    assert found <= set(db_flakes(again.db_path, scan_id))
    assert sqlite3.connect(again.db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert again.client.request("status")["state"] == "idle"


def test_a_second_daemon_on_the_same_state_directory_is_refused(start_daemon, tmp_path):
    d = start_daemon()
    cfg = d.config_path.read_text()
    for key in ("control", "events"):
        old = getattr(d, key)
        cfg = cfg.replace(old, old.rsplit(":", 1)[0] + f":{free_port()}")
    second = tmp_path / "second.toml"
    second.write_text(cfg)
    run = subprocess.run(
        [sys.executable, "-m", "flakescan.daemon", "daemon", "--config", str(second)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert f"another flakescan process (pid {d.proc.pid})" in run.stderr
    assert d.client.request("status")["state"] == "idle"


def test_notes_and_flags_go_through_the_daemon_and_are_published(start_daemon, capsys):
    from flakescan.daemon.cli import main

    d = start_daemon({"scan": {"region_um": [1000.0, 1000.0, 2100.0, 1400.0]}})
    with EventSubscriber(d.events) as sub:
        scan_id = d.client.request("scan_start")["scan_id"]
        events = collect_scan(sub, scan_id)
        finished = events[-1]["data"]
        assert finished["status"] == "completed"
        assert finished["overview"] and Path(finished["overview"]).is_file()
        fid = next(e["data"]["id"] for e in events if e["topic"] == "flake.found")
        cli = ["flake", str(fid), "--control", d.control, "--note", "for the Hall bar"]
        assert main([*cli, "--favourite"]) == 0
        reply = json.loads(capsys.readouterr().out)
        assert reply["success"] and reply["flake"]["notes"] == "for the Hall bar"
        ev = sub.next(timeout_s=10)
        while ev is not None and ev["topic"] != "flake.annotated":
            ev = sub.next(timeout_s=10)
    assert ev is not None and ev["data"]["id"] == fid and ev["data"]["favourite"] is True
    assert db_flakes(d.db_path, scan_id)[fid]["favourite"] == 1
    refused = d.client.request("flake_annotate", {"flake_id": 99999, "used": True})
    assert not refused["success"] and "no flake with id 99999" in refused["msg"]
    bad = d.client.request("flake_annotate", {"flake_id": fid, "used": "maybe"})
    assert not bad["success"] and "used" in bad["msg"] and "maybe" in bad["msg"]
