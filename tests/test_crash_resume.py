"""Twenty kill -9s of the daemon at random moments of one scan, each followed by a restart
and a resume: the catalogue at the end equals an uninterrupted scan's, and SQLite's
integrity check passes after every kill."""

from __future__ import annotations

import random
import sqlite3
import time

from flakescan.daemon.client import EventSubscriber
from tests.test_resume import catalogue

# 7 x 6 tiles of the default simulated chip: long enough to be killed twenty times.
REGION = [1000.0, 1000.0, 4500.0, 3200.0]
KILLS = 20


def integrity(db) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def scan_status(db, scan_id: int) -> tuple[str, int]:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT status, tiles_done FROM scans WHERE id = ?", (scan_id,)
        ).fetchone()
    finally:
        con.close()


def test_twenty_kills_and_resumes_leave_the_catalogue_of_an_uninterrupted_scan(start_daemon):
    rng = random.Random(8)
    config = {"scan": {"region_um": REGION}}
    # The reference: the same scan, never interrupted.
    ref = start_daemon(config, name="ref")
    with EventSubscriber(ref.events, ("scan.",)) as sub:
        ref_id = ref.client.request("scan_start")["scan_id"]
        while (ev := sub.next(timeout_s=120)) is not None and ev["topic"] != "scan.finished":
            pass
    assert ev is not None and ev["data"]["status"] == "completed"
    reference = catalogue(ref.db_path, ref_id)
    tiles_planned = len(reference[0])
    assert ref.stop() == 0
    assert len(reference[1]) > 10

    d = start_daemon(config, name="crash")
    answer = d.client.request("scan_start")
    scan_id = answer["scan_id"]
    progress = []
    for kill in range(KILLS):
        # Killed after 0-1 more tiles and a random part of the next: in the middle of a
        # move, a snap, the processing or the commit (or, at 0, as the scan (re)starts).
        tiles, delay = rng.choice((0, 1)), rng.uniform(0.0, 0.5)
        with EventSubscriber(d.events, ("tile.processed",)) as sub:
            if kill > 0:
                answer = d.client.request("scan_resume", {"scan_id": scan_id})
                assert answer["success"], answer
                assert answer["resumed_from"] == "interrupted"
                assert answer["tiles_done"] == progress[-1]
            for _ in range(tiles):
                assert sub.next(timeout_s=60) is not None, d.log()
        time.sleep(delay)
        d.proc.kill()
        d.proc.wait(timeout=30)
        assert integrity(d.db_path) == "ok", f"after kill {kill + 1}"
        status, done = scan_status(d.db_path, scan_id)
        assert status == "running"  # as the kill left it: no one closed it
        assert done < tiles_planned, f"the scan finished before kill {kill + 1}"
        progress.append(done)
        d = start_daemon(config, name="crash")
        # Back up: the scan the dead daemon was running is marked interrupted before READY.
        assert scan_status(d.db_path, scan_id)[0] == "interrupted"
    # The last resume runs to the end.
    with EventSubscriber(d.events, ("scan.",)) as sub:
        assert d.client.request("scan_resume", {"scan_id": scan_id})["success"]
        while (ev := sub.next(timeout_s=120)) is not None and ev["topic"] != "scan.finished":
            pass
    assert ev is not None and ev["data"]["status"] == "completed", ev
    assert progress == sorted(progress) and progress[-1] > 0  # it went on, never back
    assert integrity(d.db_path) == "ok"
    assert catalogue(d.db_path, scan_id) == reference
    assert d.stop() == 0
