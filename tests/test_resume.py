"""Resuming an unfinished scan: the catalogue it leaves equals an uninterrupted scan's.

In-process here (a stop, then a resume on a freshly opened microscope, as after a restart);
tests/test_crash_resume.py kills the daemon itself, again and again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flakescan.daemon.resume import hit_from_row, load_resume_point
from flakescan.daemon.scan import ScanRequest
from flakescan.db.engine import open_database, sqlite_url
from flakescan.db.queries import FlakeQuery, find_flakes
from flakescan.hardware.config import TravelLimits
from flakescan.hardware.errors import TravelLimitError
from tests.sim_helpers import scan_runner, sim_microscope

# 4 x 4 tiles over flakes of all sizes: some are cut by frame edges and merged later.
REQUEST = ScanRequest(region_um=(1000.0, 1000.0, 3000.0, 2400.0), overlap_pct=10.0, chip_id="r")

# What a catalogue holds of a scan, minus ids, uuids, timestamps, folders and the daemon's
# instrument name (they differ run to run).
_TILE_COLUMNS = (
    "tile_index, x_um, y_um, z_um, candidates, hits, background_r, background_g, "
    "background_b, background_fraction, skipped_reason"
)
_VOLATILE = {
    *("id", "tile_id", "scan_id", "uuid", "instrument"),
    *("created_at", "thumbnail_path", "annotated_at"),
}


def catalogue(db: Path, scan_id: int) -> tuple[list, list, tuple]:
    """(tiles, flakes, status) of a scan, in a canonical order, as plain tuples."""
    con = sqlite3.connect(db)
    try:
        tiles = con.execute(
            f"SELECT {_TILE_COLUMNS} FROM tiles WHERE scan_id = ? ORDER BY tile_index", (scan_id,)
        ).fetchall()
        cols = [r[1] for r in con.execute("PRAGMA table_info(flakes)")]
        keep = [c for c in cols if c not in _VOLATILE]
        flakes = con.execute(
            f"SELECT t.tile_index, {', '.join('f.' + c for c in keep)}, f.thumbnail_path "
            "FROM flakes f JOIN tiles t ON t.id = f.tile_id WHERE f.scan_id = ? "
            "ORDER BY t.tile_index, f.x_um, f.y_um",
            (scan_id,),
        ).fetchall()
        status = con.execute("SELECT status FROM scans WHERE id = ?", (scan_id,)).fetchone()
    finally:
        con.close()
    # Thumbnails by file name: the folder is the state directory's.
    flakes = [(*f[:-1], Path(f[-1]).name) for f in flakes]
    return tiles, flakes, status


def full_scan(tmp_path: Path) -> tuple[list, list, tuple]:
    mic = sim_microscope()
    engine = open_database(sqlite_url(tmp_path / "ref.db"))
    try:
        runner = scan_runner(mic, engine, tmp_path / "ref-thumbs")
        plan = runner.plan(REQUEST)
        scan_id = runner.open_scan(REQUEST, plan, {})
        assert runner.run(scan_id, REQUEST, plan).status == "completed"
        return catalogue(tmp_path / "ref.db", scan_id)
    finally:
        engine.dispose()
        mic.close()


def test_a_stopped_scan_resumed_after_a_restart_equals_the_uninterrupted_scan(tmp_path):
    reference = full_scan(tmp_path)
    db = tmp_path / "scan.db"
    engine = open_database(sqlite_url(db))
    # First run: stopped after 5 tiles (the frames in flight are still processed).
    mic = sim_microscope()
    runner = scan_runner(mic, engine, tmp_path / "thumbs")

    def stop_after_five(topic: str, data: dict) -> None:
        if topic == "tile.processed" and data["tiles_done"] == 5:
            runner.cancel()

    runner.publish = stop_after_five
    plan = runner.plan(REQUEST)
    scan_id = runner.open_scan(REQUEST, plan, {})
    first = runner.run(scan_id, REQUEST, plan)
    assert first.status == "stopped" and 5 <= first.tiles_done < plan.n_tiles
    mic.close()
    # A restart: a new microscope and runner; the scan goes on from the catalogue.
    mic = sim_microscope()
    events: list[tuple[str, dict]] = []
    runner = scan_runner(mic, engine, tmp_path / "thumbs", lambda t, d: events.append((t, d)))
    request, point = runner.reopen_scan(scan_id)
    assert request == REQUEST and point.done == frozenset(range(first.tiles_done))
    outcome = runner.run(scan_id, request, point.plan, resume=point)
    mic.close()
    assert outcome.status == "completed"
    assert outcome.tiles_done == plan.n_tiles and outcome.flakes == len(reference[1])
    snapped = [d["tile_index"] for t, d in events if t == "tile.processed"]
    assert snapped == list(range(first.tiles_done, plan.n_tiles))  # only the tiles not done
    started = next(d for t, d in events if t == "scan.started")
    assert started["resumed"] and started["tiles_done"] == first.tiles_done
    assert catalogue(db, scan_id) == reference
    # The resume is on the scan's record, with what it was before.
    summary = sqlite3.connect(db).execute("SELECT settings_json FROM scans").fetchone()[0]
    assert '"resumes": [{"at":' in summary and '"status": "stopped"' in summary
    engine.dispose()


def test_the_catalogue_gives_back_the_hits_the_live_index_held(tmp_path):
    """The sighting index a resume rebuilds holds the measurements the scan had, exactly."""
    mic = sim_microscope()
    engine = open_database(sqlite_url(tmp_path / "s.db"))
    runner = scan_runner(mic, engine, tmp_path / "thumbs")
    plan = runner.plan(REQUEST)
    scan_id = runner.open_scan(REQUEST, plan, {})
    runner.run(scan_id, REQUEST, plan)
    mic.close()
    rows = find_flakes(engine, FlakeQuery(scan_id=scan_id))
    assert rows and any(r["touches_border"] for r in rows)
    for row in rows:
        hit = hit_from_row(row)
        assert (hit.x_um, hit.bbox_um, hit.area_um2) == (
            row["x_um"],
            (row["bbox_x0_um"], row["bbox_y0_um"], row["bbox_x1_um"], row["bbox_y1_um"]),
            row["area_um2"],
        )
        assert (
            hit.shape is not None and hit.shape.as_columns()["aspect_ratio"] == row["aspect_ratio"]
        )
        assert len(hit.outline_um) >= 3 and hit.axis_source == row["axis_source"]
    engine.dispose()


def test_what_cannot_be_resumed_is_refused_with_the_reason(tmp_path):
    mic = sim_microscope()
    engine = open_database(sqlite_url(tmp_path / "s.db"))
    runner = scan_runner(mic, engine, tmp_path / "thumbs")
    plan = runner.plan(REQUEST)
    scan_id = runner.open_scan(REQUEST, plan, {})
    with pytest.raises(ValueError, match=r"scan 1 is running; only a scan that is interrupted"):
        runner.reopen_scan(scan_id)
    with pytest.raises(KeyError, match="no scan 7"):
        runner.reopen_scan(7)
    runner.writer.mark_interrupted()
    assert load_resume_point(engine, scan_id).done == frozenset()
    mic.close()
    # Travel limits narrowed since: the resume is refused before anything moves.
    narrow = sim_microscope(TravelLimits(x_min_um=0, x_max_um=2000, y_min_um=0, y_max_um=5000))
    runner = scan_runner(narrow, engine, tmp_path / "thumbs")
    with pytest.raises(TravelLimitError, match="outside the travel limits"):
        runner.reopen_scan(scan_id)
    with sqlite3.connect(tmp_path / "s.db") as con:
        assert con.execute("SELECT status FROM scans").fetchone()[0] == "interrupted"
        # A scan from before schema 5 kept no request: refused, naming why.
        con.execute("UPDATE scans SET settings_json = '{}'")
    with pytest.raises(ValueError, match="older flakescan"):
        runner.reopen_scan(scan_id)
    narrow.close()
    engine.dispose()
