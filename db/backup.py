"""`flakescan db backup`: a consistent copy of a live SQLite catalogue.

SQLite's online backup API copies the database page by page while the daemon keeps
writing (WAL mode), and the copy is checked (`PRAGMA integrity_check`) before it takes its
name: a backup interrupted or corrupt never replaces a good one.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["backup_sqlite"]


def backup_sqlite(source: Path, dest: Path, pages_per_step: int = 1024) -> dict:
    """Copy the catalogue at `source` to `dest` (a file); returns what was copied."""
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise FileNotFoundError(f"no flake database at {source}")
    if dest.resolve() == source.resolve():
        raise ValueError(f"backup destination {dest} is the database itself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out, pages=pages_per_step)
            check = out.execute("PRAGMA integrity_check").fetchone()[0]
            counts = {
                t: out.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for (t,) in out.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            version = out.execute("PRAGMA user_version").fetchone()[0]
        finally:
            out.close()
        if check != "ok":
            raise RuntimeError(f"the backup of {source} failed its integrity check: {check}")
        tmp.replace(dest)
    finally:
        src.close()
        tmp.unlink(missing_ok=True)
    return {
        "backup": str(dest),
        "bytes": dest.stat().st_size,
        "schema_version": version,
        "rows": counts,
        "integrity": check,
    }
