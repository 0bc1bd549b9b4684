"""Opening the catalogue: SQLite in WAL mode (readers never block the one writer)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text

from .models import SCHEMA_VERSION, Base

__all__ = ["SchemaVersionError", "open_database", "sqlite_url"]


class SchemaVersionError(RuntimeError):
    """The database was written by a newer flakescan."""


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed hit survives a power cut, not only a crash of the daemon.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


# Columns added by each schema version, as (table, column, SQL type); applied in order inside
# the opening transaction, so a catalogue is either fully upgraded or untouched.
_ADDED_COLUMNS: dict[int, list[tuple[str, str, str]]] = {
    2: [
        ("flakes", "axis_source", "VARCHAR(16)"),
        ("flakes", "axis_cnn_deg", "FLOAT"),
        ("flakes", "axis_cnn_confidence", "FLOAT"),
        ("flakes", "axis_edges_deg", "FLOAT"),
        ("flakes", "axis_edges_confidence", "FLOAT"),
    ],
    3: [
        ("flakes", "outline_json", "TEXT NOT NULL DEFAULT ''"),
        *(
            ("flakes", name, "FLOAT")
            for name in (
                "perimeter_um",
                "length_um",
                "width_um",
                "aspect_ratio",
                "inscribed_diameter_um",
                "rect_length_um",
                "rect_width_um",
                "rect_angle_deg",
            )
        ),
        ("flakes", "notes", "TEXT NOT NULL DEFAULT ''"),
        ("flakes", "used", "BOOLEAN NOT NULL DEFAULT 0"),
        ("flakes", "favourite", "BOOLEAN NOT NULL DEFAULT 0"),
        ("flakes", "annotated_at", "DATETIME"),
    ],
    5: [("tiles", "background_fraction", "FLOAT")],
}


def _migrate(conn: Connection, version: int) -> None:
    """Bring an older SQLite catalogue up to SCHEMA_VERSION (alembic takes over in #8).
    Old rows keep their one axis angle; its source is recorded as the edges estimate. Rows
    from before schema 3 have no outline and no shape figures (NULL): not measured."""
    for v in range(version + 1, SCHEMA_VERSION + 1):
        for table, column, sql_type in _ADDED_COLUMNS.get(v, []):
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
        if v == 2:
            conn.execute(
                text(
                    "UPDATE flakes SET axis_source = 'edges', axis_edges_deg = axis_angle_deg, "
                    "axis_edges_confidence = axis_confidence WHERE axis_angle_deg IS NOT NULL"
                )
            )
    conn.execute(text(f"PRAGMA user_version = {SCHEMA_VERSION}"))


def open_database(url: str, *, create: bool = True) -> Engine:
    """Engine for the catalogue at `url`; creates the schema when asked and absent."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            raise FileNotFoundError(f"no flake database at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            version = conn.execute(text("PRAGMA user_version")).scalar_one()
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"database schema version {version} is newer than this flakescan "
                    f"({SCHEMA_VERSION}); upgrade flakescan"
                )
            if 0 < version < SCHEMA_VERSION:
                _migrate(conn, version)
        if create:
            Base.metadata.create_all(conn)
            if engine.dialect.name == "sqlite":
                conn.execute(text(f"PRAGMA user_version = {SCHEMA_VERSION}"))
    return engine
