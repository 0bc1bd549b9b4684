"""The same catalogue code on a real PostgreSQL server (tests/pg_server.py starts it): the
schema from the migrations, two microscopes writing one catalogue, their rows found
again with instrument and uuid, no migration on reopening."""

from __future__ import annotations

from datetime import datetime

import pytest
from alembic.command import upgrade
from sqlalchemy import create_engine, inspect, text

from flakescan.db.catalogue import CatalogueWriter
from flakescan.db.engine import SchemaVersionError, open_database
from flakescan.db.migrate import alembic_config, head_revision, upgrade_database
from flakescan.db.queries import (
    FlakeQuery,
    find_flakes,
    get_flake_by_uuid,
    list_scans,
    scan_summary,
    scan_tiles,
)
from tests.old_catalogues import open_at_once
from tests.test_db import hit, tile
from tests.test_migrations import declared_columns, reflected_columns, schema_diffs


def write_scan(writer: CatalogueWriter, chip_id: str, areas: list[list[float]]) -> int:
    """A scan with one tile per entry of `areas`, one flake per area."""
    scan_id = writer.start_scan(
        chip_id=chip_id,
        name=f"{writer.instrument} {chip_id}",
        region_um=(0, 0, 1000, 1000),
        overlap_pct=10,
        pixel_size_um=0.57,
        fov_um=(583.7, 437.8),
        tiles_planned=len(areas),
        classifier_model="cnn4",
        settings={"k": 1},
    )
    for i, tile_areas in enumerate(areas):
        hits = [hit(10.0 * (i + k + 1), a, 1 if a > 100 else 2) for k, a in enumerate(tile_areas)]
        writer.record_tile(
            scan_id=scan_id,
            chip_id=chip_id,
            tile=tile(i, hits),
            z_um=0.0,
            acquired_at=datetime(2026, 1, 1),
            hits=hits,
            thumbnails=[f"{writer.instrument}-{i}-{k}.png" for k in range(len(hits))],
        )
    writer.finish_scan(scan_id, "completed")
    return scan_id


def test_open_database_creates_the_schema_through_the_migrations(postgres_url):
    engine = open_database(postgres_url)
    try:
        with engine.connect() as c:
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
                head_revision()
            )
        assert schema_diffs(engine) == []
        assert reflected_columns(engine) == {
            **declared_columns(),
            "alembic_version": {"version_num"},
        }
        uuid = {c["name"]: c for c in inspect(engine).get_columns("flakes")}["uuid"]
        assert not uuid["nullable"] and uuid["type"].length == 36
    finally:
        engine.dispose()


def test_two_microscopes_write_one_catalogue_and_find_their_flakes(postgres_url):
    engine = open_database(postgres_url)
    try:
        a = CatalogueWriter(engine, instrument="scope-a")
        b = CatalogueWriter(engine, instrument="scope-b")
        scan_a = write_scan(a, "chip-1", [[500.0, 50.0], [200.0]])
        scan_b = write_scan(b, "chip-2", [[800.0], [], [30.0, 300.0]])
        image = a.add_flake_image(
            find_flakes(engine, FlakeQuery(scan_id=scan_a))[0]["id"],
            {
                "objective": "50x",
                "image_path": "images/r.png",
                "x_um": 1.0,
                "y_um": 2.0,
                "z_um": 0.0,
                "pixel_size_um": 0.1,
                "focus": "autofocus",
                "registered": True,
                "shift_um": (0.5, -0.5),
            },
        )
        assert image["instrument"] == "scope-a" and len(image["uuid"]) == 36

        assert [f["area_um2"] for f in find_flakes(engine, FlakeQuery(instrument="scope-a"))] == [
            500.0,
            200.0,
            50.0,
        ]
        of_b = find_flakes(engine, FlakeQuery(instrument="scope-b", min_area_um2=100))
        assert [f["area_um2"] for f in of_b] == [800.0, 300.0]
        assert {f["scan_id"] for f in of_b} == {scan_b}

        everything = find_flakes(engine)
        assert len(everything) == 6
        assert {f["instrument"] for f in everything} == {"scope-a", "scope-b"}
        uuids = [f["uuid"] for f in everything]
        assert len(set(uuids)) == 6 and all(len(u) == 36 for u in uuids)
        assert get_flake_by_uuid(engine, of_b[1]["uuid"])["id"] == of_b[1]["id"]

        scans = {s["id"]: s for s in list_scans(engine)}
        assert scans[scan_a]["instrument"] == "scope-a" and scans[scan_b]["instrument"] == "scope-b"
        assert scans[scan_a]["uuid"] != scans[scan_b]["uuid"]
        assert scan_summary(engine, scan_b)["flakes_per_class"] == {1: 2, 2: 1}
        tiles_b = scan_tiles(engine, scan_b)
        assert [t["instrument"] for t in tiles_b] == ["scope-b"] * 3
        assert len({t["uuid"] for t in tiles_b}) == 3
        # An annotation (the control thread's write) keeps the row's instrument and uuid.
        noted = b.annotate(of_b[0]["id"], notes="for the device", used=True)
        assert (noted["instrument"], noted["uuid"]) == ("scope-b", of_b[0]["uuid"])
    finally:
        engine.dispose()


def test_reopening_runs_no_migration_again(postgres_url):
    open_database(postgres_url).dispose()
    engine = open_database(postgres_url)
    try:
        assert upgrade_database(engine) is None
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


def test_a_catalogue_from_before_alembic_is_stamped_from_its_columns(postgres_url):
    # PostgreSQL catalogues were made by create_all, with no version anywhere: schema 5
    # here, with a scan and a tile in it.
    engine = create_engine(postgres_url)
    with engine.begin() as c:
        upgrade(alembic_config(c), "0005")
        c.execute(text("DROP TABLE alembic_version"))
        c.execute(
            text(
                "INSERT INTO scans (instrument, chip_id, name, status, reason, started_at, "
                "region_x0_um, region_y0_um, region_x1_um, region_y1_um, overlap_pct, "
                "pixel_size_um, fov_width_um, fov_height_um, tiles_planned, tiles_done, "
                "flakes_found, classifier_model, settings_json) VALUES ('old-scope', 'c', '', "
                "'completed', '', now(), 0, 0, 1, 1, 10, 0.5, 1, 1, 1, 1, 0, 'cnn4', '{}')"
            )
        )
        c.execute(
            text(
                "INSERT INTO tiles (scan_id, tile_index, x_um, y_um, z_um, acquired_at, "
                "processed_at, candidates, hits, processing_ms, background_r, background_g, "
                "background_b, skipped_reason) VALUES (1, 0, 0, 0, 0, now(), now(), 0, 0, 1, "
                "1, 1, 1, '')"
            )
        )
    engine.dispose()
    engine = open_database(postgres_url)
    try:
        assert schema_diffs(engine) == []
        (t,) = scan_tiles(engine, 1)
        assert t["instrument"] == "old-scope" and len(t["uuid"]) == 36
    finally:
        engine.dispose()


def test_a_newer_catalogue_is_refused(postgres_url):
    engine = open_database(postgres_url)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="newer flakescan"):
        open_database(postgres_url)


def test_daemons_starting_at_once_migrate_it_once(postgres_url):
    assert open_at_once(postgres_url, 3) == []
    engine = create_engine(postgres_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (head_revision(),)
        ]
    engine.dispose()
