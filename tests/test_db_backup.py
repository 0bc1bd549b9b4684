"""`flakescan db backup`: a consistent copy while the daemon's writer keeps writing."""

from __future__ import annotations

import sqlite3
import threading

from flakescan.daemon.cli import main
from flakescan.db.models import SCHEMA_VERSION
from tests.test_db import catalogue, hit, record  # noqa: F401 (catalogue: a fixture)


def test_a_backup_taken_during_writes_is_whole_and_checked(catalogue, tmp_path, capsys):  # noqa: F811
    _, writer, scan_id, db = catalogue
    for i in range(100):
        record(writer, scan_id, i, [hit(float(i), 30.0, 1)])
    go = threading.Event()

    def keep_writing() -> None:
        go.set()
        for i in range(100, 400):
            record(writer, scan_id, i, [hit(float(i), 30.0, 1)])

    t = threading.Thread(target=keep_writing)
    t.start()
    go.wait()
    out = tmp_path / "backups" / "cat.db"
    assert main(["db", "backup", str(out), "--db", str(db)]) == 0
    t.join()
    assert [p.name for p in out.parent.iterdir()] == ["cat.db"]  # no part file left
    copy = sqlite3.connect(out)
    tiles = copy.execute("SELECT count(*) FROM tiles").fetchone()[0]
    flakes = copy.execute("SELECT count(*) FROM flakes").fetchone()[0]
    # A moment of the catalogue: at least what was there before, one flake per tile.
    assert 100 <= tiles <= 400 and flakes == tiles
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    capsys.readouterr()
    assert main(["db", "backup", str(db), "--db", str(db)]) == 2
    assert "is the database itself" in capsys.readouterr().err
