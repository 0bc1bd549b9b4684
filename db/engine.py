"""Opening the catalogue: SQLite in WAL mode (readers never block the one writer)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text

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
        if create:
            Base.metadata.create_all(conn)
            if engine.dialect.name == "sqlite":
                conn.execute(text(f"PRAGMA user_version = {SCHEMA_VERSION}"))
    return engine
