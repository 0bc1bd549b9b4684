"""`flakescan db backup`: a consistent copy while the daemon's writer keeps writing."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime

from flakescan.daemon.cli import main
from flakescan.db.catalogue import CatalogueWriter
from flakescan.db.engine import open_database, sqlite_url
from tests.test_db import hit, tile


def test_a_backup_taken_during_writes_is_whole_and_checked(tmp_path, capsys):
    db = tmp_path / "flakescan.db"
    engine = open_database(sqlite_url(db))
    writer = CatalogueWriter(engine)
    scan = writer.start_scan(
        instrument="t",
        chip_id="c",
        name="",
        region_um=(0, 0, 1, 1),
        overlap_pct=10,
        pixel_size_um=0.57,
        fov_um=(583.7, 437.8),
        tiles_planned=400,
        classifier_model="m",
        settings={},
    )

    def record(i: int) -> None:
        writer.record_tile(
            scan_id=scan,
            chip_id="c",
            tile=tile(i, [hit(float(i), 30.0, 1)]),
            z_um=0.0,
            acquired_at=datetime(2026, 1, 1),
            hits=[hit(float(i), 30.0, 1)],
            thumbnails=[f"t{i}.png"],
        )

    for i in range(100):
        record(i)
    go = threading.Event()

    def keep_writing() -> None:
        go.set()
        for i in range(100, 400):
            record(i)

    t = threading.Thread(target=keep_writing)
    t.start()
    go.wait()
    out = tmp_path / "backups" / "cat.db"
    assert main(["db", "backup", str(out), "--db", str(db)]) == 0
    t.join()
    engine.dispose()
    assert [p.name for p in out.parent.iterdir()] == ["cat.db"]  # no part file left
    copy = sqlite3.connect(out)
    tiles, flakes = (
        copy.execute("SELECT count(*) FROM tiles").fetchone()[0],
        copy.execute("SELECT count(*) FROM flakes").fetchone()[0],
    )
    # A moment of the catalogue: at least what was there before, one flake per tile.
    assert 100 <= tiles <= 400 and flakes == tiles
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("PRAGMA user_version").fetchone()[0] == 4
    capsys.readouterr()
    assert main(["db", "backup", str(db), "--db", str(db)]) == 2
    assert "is the database itself" in capsys.readouterr().err
