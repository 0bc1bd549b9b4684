"""Catalogues as older flakescans wrote them (before alembic): raw SQL of the old schemas,
and `downgrade`, which takes a current catalogue back to an old schema."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from flakescan.db.engine import open_database
from flakescan.db.schema_history import LEGACY_COLUMNS, LEGACY_SCHEMA, LEGACY_TABLES

# What flakescan 0.1 (schema 1) created, as SQLite has it in sqlite_master.
SCHEMA_1 = """
CREATE TABLE scans (
    id INTEGER NOT NULL, instrument VARCHAR(64) NOT NULL, chip_id VARCHAR(128) NOT NULL,
    name VARCHAR(256) NOT NULL, status VARCHAR(16) NOT NULL, reason TEXT NOT NULL,
    started_at DATETIME NOT NULL, finished_at DATETIME,
    region_x0_um FLOAT NOT NULL, region_y0_um FLOAT NOT NULL, region_x1_um FLOAT NOT NULL,
    region_y1_um FLOAT NOT NULL, overlap_pct FLOAT NOT NULL, pixel_size_um FLOAT NOT NULL,
    fov_width_um FLOAT NOT NULL, fov_height_um FLOAT NOT NULL, tiles_planned INTEGER NOT NULL,
    tiles_done INTEGER NOT NULL, flakes_found INTEGER NOT NULL,
    classifier_model VARCHAR(256) NOT NULL, settings_json TEXT NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_scans_chip_id ON scans (chip_id);
CREATE INDEX ix_scans_status ON scans (status);
CREATE TABLE tiles (
    id INTEGER NOT NULL, scan_id INTEGER NOT NULL, tile_index INTEGER NOT NULL,
    x_um FLOAT NOT NULL, y_um FLOAT NOT NULL, z_um FLOAT NOT NULL,
    acquired_at DATETIME NOT NULL, processed_at DATETIME NOT NULL,
    candidates INTEGER NOT NULL, hits INTEGER NOT NULL, processing_ms FLOAT NOT NULL,
    background_r FLOAT NOT NULL, background_g FLOAT NOT NULL, background_b FLOAT NOT NULL,
    skipped_reason TEXT NOT NULL,
    PRIMARY KEY (id), UNIQUE (scan_id, tile_index),
    FOREIGN KEY(scan_id) REFERENCES scans (id) ON DELETE CASCADE
);
CREATE INDEX ix_tiles_scan_id ON tiles (scan_id);
CREATE TABLE flakes (
    id INTEGER NOT NULL, scan_id INTEGER NOT NULL, tile_id INTEGER NOT NULL,
    chip_id VARCHAR(128) NOT NULL, x_um FLOAT NOT NULL, y_um FLOAT NOT NULL,
    bbox_x0_um FLOAT NOT NULL, bbox_y0_um FLOAT NOT NULL, bbox_x1_um FLOAT NOT NULL,
    bbox_y1_um FLOAT NOT NULL, area_um2 FLOAT NOT NULL, flake_class INTEGER NOT NULL,
    score_class1 FLOAT NOT NULL, score_class2 FLOAT NOT NULL, score_class3 FLOAT NOT NULL,
    score_any FLOAT NOT NULL, contrast_r FLOAT NOT NULL, contrast_g FLOAT NOT NULL,
    contrast_b FLOAT NOT NULL, contrast_class INTEGER NOT NULL, axis_angle_deg FLOAT,
    axis_confidence FLOAT, touches_border BOOLEAN NOT NULL, thumbnail_path TEXT NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(scan_id) REFERENCES scans (id) ON DELETE CASCADE,
    FOREIGN KEY(tile_id) REFERENCES tiles (id) ON DELETE CASCADE
);
CREATE INDEX ix_flakes_scan_id ON flakes (scan_id);
CREATE INDEX ix_flakes_tile_id ON flakes (tile_id);
CREATE INDEX ix_flakes_chip_id ON flakes (chip_id);
CREATE INDEX ix_flakes_class_area ON flakes (flake_class, area_um2);
"""

# What schemas 2-4 did to a schema-1 file (the hand-written ladder and create_all).
TO_SCHEMA_4 = """
ALTER TABLE flakes ADD COLUMN axis_source VARCHAR(16);
ALTER TABLE flakes ADD COLUMN axis_cnn_deg FLOAT;
ALTER TABLE flakes ADD COLUMN axis_cnn_confidence FLOAT;
ALTER TABLE flakes ADD COLUMN axis_edges_deg FLOAT;
ALTER TABLE flakes ADD COLUMN axis_edges_confidence FLOAT;
UPDATE flakes SET axis_source = 'edges', axis_edges_deg = axis_angle_deg,
    axis_edges_confidence = axis_confidence WHERE axis_angle_deg IS NOT NULL;
ALTER TABLE flakes ADD COLUMN outline_json TEXT NOT NULL DEFAULT '';
ALTER TABLE flakes ADD COLUMN perimeter_um FLOAT;
ALTER TABLE flakes ADD COLUMN length_um FLOAT;
ALTER TABLE flakes ADD COLUMN width_um FLOAT;
ALTER TABLE flakes ADD COLUMN aspect_ratio FLOAT;
ALTER TABLE flakes ADD COLUMN inscribed_diameter_um FLOAT;
ALTER TABLE flakes ADD COLUMN rect_length_um FLOAT;
ALTER TABLE flakes ADD COLUMN rect_width_um FLOAT;
ALTER TABLE flakes ADD COLUMN rect_angle_deg FLOAT;
ALTER TABLE flakes ADD COLUMN notes TEXT NOT NULL DEFAULT '';
ALTER TABLE flakes ADD COLUMN used BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE flakes ADD COLUMN favourite BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE flakes ADD COLUMN annotated_at DATETIME;
CREATE TABLE flake_images (
    id INTEGER NOT NULL, flake_id INTEGER NOT NULL, objective VARCHAR(64) NOT NULL,
    path TEXT NOT NULL, x_um FLOAT NOT NULL, y_um FLOAT NOT NULL, z_um FLOAT NOT NULL,
    pixel_size_um FLOAT NOT NULL, focus VARCHAR(16) NOT NULL, registered BOOLEAN NOT NULL,
    shift_x_um FLOAT NOT NULL, shift_y_um FLOAT NOT NULL, taken_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    FOREIGN KEY(flake_id) REFERENCES flakes (id) ON DELETE CASCADE
);
CREATE INDEX ix_flake_images_flake_id ON flake_images (flake_id);
"""

# Two scans of two chips, three tiles, three flakes (one measured axis, one none).
ROWS_1 = """
INSERT INTO scans VALUES (1, 'scope-a', 'chip-A', 'first', 'completed', '',
    '2025-03-01 10:00:00', '2025-03-01 11:00:00', 0, 0, 1000, 1000, 10, 0.57, 583.7, 437.8,
    2, 2, 2, 'cnn4', '{}');
INSERT INTO scans VALUES (2, 'scope-a', 'chip-B', 'second', 'interrupted', 'killed',
    '2025-03-02 10:00:00', NULL, 0, 0, 500, 500, 10, 0.57, 583.7, 437.8, 4, 1, 1, 'cnn4', '{}');
INSERT INTO tiles VALUES (1, 1, 0, 0, 0, 0, '2025-03-01 10:01:00', '2025-03-01 10:01:01',
    3, 1, 40, 101, 83, 179, '');
INSERT INTO tiles VALUES (2, 1, 1, 500, 0, 0, '2025-03-01 10:02:00', '2025-03-01 10:02:01',
    2, 1, 41, 101, 83, 179, '');
INSERT INTO tiles VALUES (3, 2, 0, 0, 0, 0, '2025-03-02 10:01:00', '2025-03-02 10:01:01',
    1, 1, 39, 100, 80, 170, '');
INSERT INTO flakes VALUES (1, 1, 1, 'chip-A', 10, 20, 5, 15, 15, 25, 530, 1,
    0.9, 0.1, 0.05, 0.95, 0.065, 0.064, 0.002, 1, 12.5, 0.7, 0, 'images/1.png',
    '2025-03-01 10:01:01');
INSERT INTO flakes VALUES (2, 1, 2, 'chip-A', 510, 20, 505, 15, 515, 25, 80, 2,
    0.2, 0.7, 0.05, 0.9, 0.05, 0.05, 0.001, 2, NULL, NULL, 1, 'images/2.png',
    '2025-03-01 10:02:01');
INSERT INTO flakes VALUES (3, 2, 3, 'chip-B', 30, 40, 25, 35, 35, 45, 200, 1,
    0.8, 0.1, 0.05, 0.9, 0.06, 0.06, 0.002, 1, 3.0, 0.4, 0, 'images/3.png',
    '2025-03-02 10:01:01');
"""


def write_old_catalogue(path: Path, version: int) -> Path:
    """A file at schema 1 or 4, with ROWS_1, as that flakescan left it."""
    assert version in (1, 4)
    con = sqlite3.connect(path)
    try:
        con.executescript(SCHEMA_1 + ROWS_1 + (TO_SCHEMA_4 if version == 4 else ""))
        con.execute(f"PRAGMA user_version = {version}")
        con.commit()
    finally:
        con.close()
    return path


def downgrade(con: sqlite3.Connection, version: int) -> None:
    """Make a current catalogue look as a flakescan before alembic wrote it at `version`:
    no alembic_version, none of schema 6's columns, none of the later schemas' columns."""
    con.execute("DROP TABLE alembic_version")
    for table in ("scans", "tiles", "flakes", "flake_images"):
        con.execute(f"DROP INDEX ix_{table}_uuid")
        con.execute(f"DROP INDEX ix_{table}_instrument")
        con.execute(f"ALTER TABLE {table} DROP COLUMN uuid")
        if table != "scans":  # scans had an instrument from the start
            con.execute(f"ALTER TABLE {table} DROP COLUMN instrument")
    for v in range(version + 1, LEGACY_SCHEMA + 1):
        for table, col, *_ in LEGACY_COLUMNS.get(v, ()):
            con.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
        for table in LEGACY_TABLES.get(v, ()):
            con.execute(f"DROP TABLE {table}")
    con.execute(f"PRAGMA user_version = {version}")


def open_at_once(url: str, n: int) -> list[BaseException]:
    """`n` threads open one catalogue at the same moment; what any of them raised."""
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            open_database(url).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
