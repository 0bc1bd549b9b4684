"""Alembic migrations of the catalogue, applied when it is opened.

The environment lives in the package (db/migrations, no alembic.ini): the Config is
built here. Revision 000N is schema N. Files from before alembic (PRAGMA user_version
1..5, no alembic_version table) are stamped at their version and upgraded from there;
a PostgreSQL catalogue from then (create_all, no version anywhere) is read off its
columns. The whole upgrade is one transaction: on SQLite a dedicated connection issues
BEGIN IMMEDIATE itself (the driver would leave DDL outside any transaction) with foreign
keys off (batch mode copies tables, and dropping one would cascade into its children).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.pool import NullPool

from .models import SCHEMA_VERSION
from .schema_history import LEGACY_SCHEMA

__all__ = [
    "MIGRATIONS",
    "SchemaVersionError",
    "alembic_config",
    "current_revision",
    "describe",
    "head_revision",
    "upgrade_database",
]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant: daemons of several microscopes starting at once against one PostgreSQL
# catalogue take turns to migrate it.
_PG_LOCK_KEY = 0x666C616B


class SchemaVersionError(RuntimeError):
    """The database was written by a newer flakescan."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's Config in code: the package's migrations, and the connection to use."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    return _script().get_current_head() or ""


def current_revision(conn: Connection) -> str | None:
    """The revision the catalogue is at (None: not under alembic)."""
    heads = MigrationContext.configure(conn).get_current_heads()
    return heads[0] if heads else None


@dataclass(frozen=True)
class _Plan:
    """What an open has to do: stamp a pre-alembic catalogue, then upgrade to head."""

    stamp: str | None
    current: str | None


def _legacy_version(conn: Connection, tables: set[str]) -> int:
    """The schema of a catalogue from before alembic: SQLite said it in user_version;
    PostgreSQL's came from create_all, so its columns tell."""
    if conn.dialect.name == "sqlite":
        version = conn.execute(text("PRAGMA user_version")).scalar_one()
        if version:
            return version
    insp = inspect(conn)
    flakes = {c["name"] for c in insp.get_columns("flakes")} if "flakes" in tables else set()
    tiles = {c["name"] for c in insp.get_columns("tiles")} if "tiles" in tables else set()
    if "background_fraction" in tiles:
        return 5
    if "flake_images" in tables:
        return 4
    if "outline_json" in flakes:
        return 3
    return 2 if "axis_source" in flakes else 1


def _plan(conn: Connection, create: bool) -> _Plan | None:
    """None when there is nothing to do; raises SchemaVersionError for a newer catalogue."""
    tables = set(inspect(conn).get_table_names())
    head = head_revision()
    if "alembic_version" in tables:
        current = current_revision(conn)
        if current == head:
            return None
        if current is not None:
            try:
                _script().get_revision(current)
            except CommandError:
                raise SchemaVersionError(
                    f"database is at migration {current}, which this flakescan does not "
                    f"know (its newest is {head}, schema {SCHEMA_VERSION}): it was written "
                    "by a newer flakescan; upgrade flakescan"
                ) from None
        return _Plan(stamp=None, current=current)
    if conn.dialect.name == "sqlite":
        version = conn.execute(text("PRAGMA user_version")).scalar_one()
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database schema version {version} is newer than this flakescan "
                f"({SCHEMA_VERSION}); upgrade flakescan"
            )
        if version > LEGACY_SCHEMA:
            raise SchemaVersionError(
                f"database says schema {version} but has no alembic_version table: "
                "not a catalogue flakescan wrote"
            )
    if "scans" in tables:
        return _Plan(stamp=f"{_legacy_version(conn, tables):04d}", current=None)
    return _Plan(stamp=None, current=None) if create else None


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction that holds the write lock, committed on exit."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            yield conn
        return
    mig = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(mig, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # we say BEGIN, the driver stays out of it
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "busy_timeout=30000",
            "foreign_keys=OFF",
        ):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(mig, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with mig.begin() as conn:
            before = len(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall())
            yield conn
            after = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if len(after) > before:  # a copied table lost its children: roll it all back
                raise RuntimeError(f"the migration broke foreign keys: {after[:5]}")
    finally:
        mig.dispose()


def upgrade_database(engine: Engine, *, create: bool = True) -> str | None:
    """Bring the catalogue to head (creating it when empty and `create`); returns the
    revision it was at before, or None when nothing was done. Readers of an up-to-date
    catalogue only read alembic_version: no write lock is taken."""
    with engine.connect() as conn:
        if _plan(conn, create) is None:
            return None
    with _migration_connection(engine) as conn:
        plan = _plan(conn, create)  # again, under the lock: another process may have done it
        if plan is None:
            return None
        if plan.stamp is not None:
            log.info("catalogue from before alembic: schema %s, stamped", plan.stamp)
            command.stamp(alembic_config(conn), plan.stamp)
        command.upgrade(alembic_config(conn), "head")
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("catalogue upgraded from %s to %s", plan.stamp or plan.current, head_revision())
        return plan.stamp or plan.current or "empty"


def describe(url: str) -> dict:
    """Where a catalogue stands, without migrating it (for a `db current` command)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            current = current_revision(conn) if "alembic_version" in tables else None
            try:
                plan = _plan(conn, create=False)
                newer = False
            except SchemaVersionError:
                plan, newer = None, True
    finally:
        engine.dispose()
    return {
        "revision": current,
        "head": head_revision(),
        "schema_version": SCHEMA_VERSION,
        "pre_alembic_schema": plan.stamp if plan else None,
        "upgrade_pending": plan is not None,
        "newer_than_this_flakescan": newer,
    }
