"""Opening the catalogue: SQLite in WAL mode (readers never block the one writer), or
PostgreSQL for a lab's several microscopes; alembic brings it to this code's schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from .migrate import SchemaVersionError, upgrade_database

__all__ = ["SchemaVersionError", "open_database", "sqlite_url"]


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


def open_database(url: str, *, create: bool = True) -> Engine:
    """Engine for the catalogue at `url`, migrated to this code's schema (created when
    `create` and absent). Raises SchemaVersionError for a catalogue of a newer flakescan."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            raise FileNotFoundError(f"no flake database at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        upgrade_database(engine, create=create)
    except BaseException:
        engine.dispose()
        raise
    return engine
