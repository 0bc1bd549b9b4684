"""The catalogue: schema, WAL, one transaction per tile, plain sqlite3 access."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import text

from flakescan.db.catalogue import CatalogueWriter
from flakescan.db.engine import SchemaVersionError, open_database, sqlite_url
from flakescan.db.models import SCHEMA_VERSION
from flakescan.db.queries import FlakeQuery, find_flakes, get_flake, list_scans, scan_summary
from flakescan.inference.pipeline import Hit, TileResult
from flakescan.inference.shape import measure_shape
from tests.old_catalogues import downgrade


def hit(x: float, area: float, cls: int) -> Hit:
    return Hit(
        x_um=x,
        y_um=2 * x,
        bbox_um=(x - 5, 2 * x - 5, x + 5, 2 * x + 5),
        area_um2=area,
        flake_class=cls,
        scores=(0.9, 0.1, 0.05, 0.95),
        contrast=(0.065, 0.064, 0.002),
        contrast_class=1,
        axis_angle_deg=12.5,
        axis_confidence=0.7,
        touches_border=False,
        centroid_px=(100.0, 200.0),
        thumbnail=np.zeros((4, 4, 3), np.uint8),
    )


def shaped_hit(length: float, width: float, x: float = 500.0, cls: int = 1) -> Hit:
    """A rectangular flake, its outline and shape figures as the pipeline gives them."""
    outline = ((x, 0.0), (x + length, 0.0), (x + length, width), (x, width))
    return replace(
        hit(x + length / 2, length * width, cls),
        outline_um=outline,
        shape=measure_shape(outline),
    )


def tile(index: int, hits: list[Hit]) -> TileResult:
    return TileResult(
        index=index,
        x_um=100.0 * index,
        y_um=0.0,
        n_candidates=len(hits) + 1,
        hits=hits,
        background=(101.0, 83.0, 179.0),
        skipped_reason=None,
        timings_ms={"total": 42.0},
    )


@pytest.fixture
def catalogue(tmp_path):
    engine = open_database(sqlite_url(tmp_path / "cat.db"))
    writer = CatalogueWriter(engine)
    scan_id = writer.start_scan(
        instrument="sim-1",
        chip_id="chip-A",
        name="t",
        region_um=(0, 0, 1000, 1000),
        overlap_pct=10,
        pixel_size_um=0.57,
        fov_um=(583.7, 437.8),
        tiles_planned=3,
        classifier_model="cnn4",
        settings={"k": 1},
    )
    yield engine, writer, scan_id, tmp_path / "cat.db"
    engine.dispose()


def record(writer, scan_id, index, hits, updates=()):
    rows, _ = writer.record_tile(
        scan_id=scan_id,
        chip_id="chip-A",
        tile=tile(index, hits),
        z_um=0.0,
        acquired_at=datetime(2026, 1, 1),
        hits=hits,
        thumbnails=[f"t{index}-{k}.png" for k in range(len(hits))],
        updates=updates,
    )
    return rows


def test_sqlite_is_in_wal_mode_with_a_schema_version(catalogue):
    engine, *_ = catalogue
    with engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA user_version")).scalar() == SCHEMA_VERSION == 6
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_a_version_1_catalogue_is_upgraded_in_place_and_keeps_its_rows(catalogue):
    engine, writer, scan_id, path = catalogue
    record(writer, scan_id, 0, [hit(1.0, 30.0, 1)])
    engine.dispose()
    # Turn it into what flakescan 0.1 wrote: schema 1 had one axis angle per flake, and
    # no outlines, shape figures, notes or flags (schema 3), no tile background fraction (5).
    with sqlite3.connect(path) as con:
        downgrade(con, 1)
    engine = open_database(sqlite_url(path), create=False)
    with engine.connect() as c:
        assert c.execute(text("PRAGMA user_version")).scalar() == SCHEMA_VERSION
        row = c.execute(
            text(
                "SELECT axis_angle_deg, axis_source, axis_edges_deg, "
                "axis_edges_confidence, axis_cnn_deg FROM flakes"
            )
        ).one()
        old = c.execute(text("SELECT notes, used, favourite, aspect_ratio FROM flakes")).one()
    assert tuple(row) == (12.5, "edges", 12.5, 0.7, None)
    assert tuple(old) == ("", 0, 0, None)  # not measured then: NULL, not a made-up figure
    engine.dispose()


def test_a_version_2_catalogue_gains_outlines_notes_and_flags(catalogue):
    engine, writer, scan_id, path = catalogue
    record(writer, scan_id, 0, [hit(1.0, 30.0, 1)])
    engine.dispose()
    with sqlite3.connect(path) as con:
        downgrade(con, 2)
    engine = open_database(sqlite_url(path))
    writer = CatalogueWriter(engine)
    rows = record(writer, scan_id, 1, [shaped_hit(40.0, 20.0)])
    assert rows[0]["aspect_ratio"] == pytest.approx(2.0, rel=0.02)
    with engine.connect() as c:
        assert c.execute(text("PRAGMA user_version")).scalar() == SCHEMA_VERSION
        assert c.execute(text("SELECT count(*) FROM flakes WHERE used = 0")).scalar() == 2
    engine.dispose()


def test_tiles_and_flakes_are_written_and_queried(catalogue):
    engine, writer, scan_id, _ = catalogue
    rows = record(writer, scan_id, 0, [hit(10, 500, 1), hit(20, 50, 2)])
    record(writer, scan_id, 1, [hit(30, 200, 1)])
    assert [r["area_um2"] for r in rows] == [500, 50]
    assert rows[0]["thumbnail_path"] == "t0-0.png"
    everything = find_flakes(engine)
    assert [f["area_um2"] for f in everything] == [500, 200, 50]  # largest first
    assert [f["id"] for f in find_flakes(engine, FlakeQuery(flake_class=1))] == [1, 3]
    assert len(find_flakes(engine, FlakeQuery(min_area_um2=100, max_area_um2=300))) == 1
    assert find_flakes(engine, FlakeQuery(scan_id=99)) == []
    assert get_flake(engine, 2)["flake_class"] == 2
    assert get_flake(engine, 999) is None
    summary = scan_summary(engine, scan_id)
    assert summary["tiles_done"] == 2 and summary["flakes_found"] == 3
    assert summary["flakes_per_class"] == {1: 2, 2: 1}
    done = writer.finish_scan(scan_id, "completed")
    assert done["status"] == "completed"
    assert list_scans(engine)[0]["status"] == "completed"


def test_a_failed_tile_write_leaves_nothing_half_written(catalogue):
    engine, writer, scan_id, _ = catalogue
    record(writer, scan_id, 0, [hit(10, 500, 1)])
    with pytest.raises(ValueError):  # thumbnails and hits disagree: refused mid-write
        writer.record_tile(
            scan_id=scan_id,
            chip_id="chip-A",
            tile=tile(1, []),
            z_um=0.0,
            acquired_at=datetime(2026, 1, 1),
            hits=[hit(20, 100, 1)],
            thumbnails=[],
        )
    assert len(find_flakes(engine)) == 1
    assert scan_summary(engine, scan_id)["tiles_done"] == 1
    # The same tile again (a resumed scan asking twice) is a no-op: nothing is logged twice.
    assert record(writer, scan_id, 0, [hit(10, 500, 1)]) == []
    assert len(find_flakes(engine)) == 1
    assert scan_summary(engine, scan_id)["tiles_done"] == 1


def test_scans_left_running_are_marked_interrupted(catalogue):
    engine, writer, scan_id, _ = catalogue
    assert writer.mark_interrupted() == [scan_id]
    assert scan_summary(engine, scan_id)["status"] == "interrupted"
    assert writer.mark_interrupted() == []


def test_plain_sqlite3_reads_it_while_the_writer_holds_it(catalogue):
    _, writer, scan_id, path = catalogue
    record(writer, scan_id, 0, [hit(10, 500, 1)])
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT f.flake_class, f.area_um2, s.chip_id "
            "FROM flakes f JOIN scans s ON s.id = f.scan_id"
        ).fetchone()
    finally:
        con.close()
    assert row == (1, 500.0, "chip-A")


def test_a_database_from_a_newer_flakescan_is_refused(tmp_path):
    path = tmp_path / "new.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        open_database(sqlite_url(path))


def test_opening_a_missing_database_read_only_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no flake database"):
        open_database(sqlite_url(tmp_path / "missing.db"), create=False)


def test_a_later_tile_updates_a_flake_in_the_same_transaction(catalogue):
    engine, writer, scan_id, _ = catalogue
    (first,) = record(writer, scan_id, 0, [hit(10, 500, 1)])
    bigger = replace(hit(12, 900, 1), bbox_um=(0.0, 0.0, 40.0, 40.0))
    rows, updated = writer.record_tile(
        scan_id=scan_id,
        chip_id="chip-A",
        tile=tile(1, []),
        z_um=0.0,
        acquired_at=datetime(2026, 1, 1),
        hits=[],
        thumbnails=[],
        updates=[(first["id"], bigger)],
    )
    assert rows == [] and updated[0]["id"] == first["id"] and updated[0]["area_um2"] == 900
    assert updated[0]["thumbnail_path"] == "t0-0.png"  # the first sighting's picture stays
    assert scan_summary(engine, scan_id)["flakes_found"] == 1
    # An update of a flake that is not there fails, and the tile is not written either.
    with pytest.raises(KeyError, match="no flake 999"):
        record(writer, scan_id, 2, [hit(50, 100, 2)], updates=[(999, bigger)])
    assert scan_summary(engine, scan_id)["tiles_done"] == 2
    assert len(find_flakes(engine)) == 1
