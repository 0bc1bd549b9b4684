"""Alembic migrations of SQLite catalogues: files of older flakescans upgrade with their rows,
a fresh catalogue is what models.py declares, a newer one is refused, a failed upgrade
leaves the file as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData

from flakescan.db.engine import SchemaVersionError, open_database, sqlite_url
from flakescan.db.migrate import describe, head_revision, upgrade_database
from flakescan.db.models import SCHEMA_VERSION, Base
from flakescan.db.queries import FlakeQuery, find_flakes, list_scans, scan_tiles
from tests.old_catalogues import open_at_once, write_old_catalogue

TABLES = ("scans", "tiles", "flakes", "flake_images")


def schema_diffs(engine: Engine) -> list:
    """What alembic's autogenerate would change to make the database match models.py."""
    with engine.connect() as c:
        ctx = MigrationContext.configure(c, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def reflected_columns(engine: Engine) -> dict[str, set[str]]:
    meta = MetaData()
    meta.reflect(engine)
    return {name: {c.name for c in t.columns} for name, t in meta.tables.items()}


def declared_columns() -> dict[str, set[str]]:
    return {name: {c.name for c in t.columns} for name, t in Base.metadata.tables.items()}


def raw(path: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def assert_upgraded_with_rows(path: Path) -> None:
    """ROWS_1 of tests/old_catalogues.py, all there, stamped with their scan's instrument
    and each with its own uuid."""
    engine = open_database(sqlite_url(path), create=False)
    try:
        assert schema_diffs(engine) == []
        assert [(s["id"], s["chip_id"], s["status"]) for s in list_scans(engine)] == [
            (1, "chip-A", "completed"),
            (2, "chip-B", "interrupted"),
        ]
        flakes = find_flakes(engine, FlakeQuery(order_by="id"))[::-1]  # id: largest first
        assert [(f["id"], f["tile_id"], f["area_um2"]) for f in flakes] == [
            (1, 1, 530.0),
            (2, 2, 80.0),
            (3, 3, 200.0),
        ]
        assert flakes[0]["axis_source"] == "edges" and flakes[0]["axis_edges_deg"] == 12.5
        assert flakes[1]["axis_source"] is None and flakes[1]["aspect_ratio"] is None
        assert [t["tile_index"] for t in scan_tiles(engine, 1)] == [0, 1]
        assert find_flakes(engine, FlakeQuery(instrument="scope-a", chip_id="chip-B"))[0]["id"] == 3
    finally:
        engine.dispose()
    uuids = []
    for table in ("scans", "tiles", "flakes"):
        rows = raw(path, f"SELECT instrument, uuid FROM {table}")
        assert {r[0] for r in rows} == {"scope-a"}
        assert all(len(r[1]) == 36 and r[1].count("-") == 4 for r in rows)
        uuids += [r[1] for r in rows]
    assert len(set(uuids)) == len(uuids) == 2 + 3 + 3
    assert raw(path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw(path, "PRAGMA foreign_key_check") == []


@pytest.mark.parametrize("version", [1, 4])
def test_an_old_catalogue_upgrades_to_head_with_its_rows(tmp_path, version):
    path = write_old_catalogue(tmp_path / f"v{version}.db", version)
    assert_upgraded_with_rows(path)


def test_a_schema_5_file_without_flake_images_gets_the_table(tmp_path):
    # What `create=False` made of a schema-3 file before alembic: user_version went to 5,
    # create_all (and so flake_images) was skipped.
    path = write_old_catalogue(tmp_path / "v5.db", 4)
    con = sqlite3.connect(path)
    con.executescript(
        "DROP TABLE flake_images; ALTER TABLE tiles ADD COLUMN background_fraction FLOAT;"
    )
    con.execute("PRAGMA user_version = 5")
    con.close()
    assert_upgraded_with_rows(path)
    assert "flake_images" in reflected_columns(open_database(sqlite_url(path)))


def test_a_fresh_catalogue_is_what_models_declare(tmp_path):
    engine = open_database(sqlite_url(tmp_path / "fresh.db"))
    try:
        assert schema_diffs(engine) == []
        assert reflected_columns(engine) == {
            **declared_columns(),
            "alembic_version": {"version_num"},
        }
        # Reopening finds it at head: nothing to do, no write lock taken.
        assert upgrade_database(engine) is None
    finally:
        engine.dispose()


def test_a_catalogue_from_a_newer_flakescan_is_refused(tmp_path):
    path = tmp_path / "newer.db"
    open_database(sqlite_url(path)).dispose()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    con.commit()
    con.close()
    with pytest.raises(SchemaVersionError, match="newer flakescan"):
        open_database(sqlite_url(path), create=False)


def test_a_failed_upgrade_leaves_the_file_untouched(tmp_path):
    # A file whose flakes table already has a `uuid` column: revision 0006 fails on it
    # after it has copied the scans table. Everything is rolled back.
    path = write_old_catalogue(tmp_path / "odd.db", 4)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE flakes ADD COLUMN uuid TEXT")
    con.commit()
    con.close()
    before = raw(path, "SELECT sql FROM sqlite_master ORDER BY name")
    with pytest.raises(Exception, match="uuid"):
        open_database(sqlite_url(path))
    assert raw(path, "SELECT sql FROM sqlite_master ORDER BY name") == before
    assert raw(path, "PRAGMA user_version") == [(4,)]
    assert raw(path, "SELECT count(*) FROM flakes") == [(3,)]


def test_processes_opening_a_new_catalogue_at_once_migrate_it_once(tmp_path):
    url = sqlite_url(tmp_path / "race.db")
    assert open_at_once(url, 4) == []
    assert raw(tmp_path / "race.db", "SELECT version_num FROM alembic_version") == [
        (head_revision(),)
    ]


def test_describe_tells_where_a_catalogue_stands_without_migrating_it(tmp_path):
    path = write_old_catalogue(tmp_path / "v1.db", 1)
    before = describe(sqlite_url(path))
    assert before["revision"] is None and before["pre_alembic_schema"] == "0001"
    assert before["upgrade_pending"] and raw(path, "PRAGMA user_version") == [(1,)]
    open_database(sqlite_url(path)).dispose()
    after = describe(sqlite_url(path))
    assert after["revision"] == after["head"] == head_revision()
    assert not after["upgrade_pending"] and not after["newer_than_this_flakescan"]


def test_db_current_and_upgrade_commands(tmp_path, capsys):
    import json

    from flakescan.daemon.cli import main

    path = write_old_catalogue(tmp_path / "old.db", 4)
    assert main(["db", "current", "--db", str(path)]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["upgrade_pending"] and before["pre_alembic_schema"] == "0004"
    assert main(["db", "upgrade", "--db", str(path)]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["revision"] == head_revision() and not after["upgrade_pending"]
    assert main(["db", "backup", "--db", str(path)]) == 2
    assert "give the backup file" in capsys.readouterr().err
