"""Schema 1: scans, tiles, flakes (flakescan 0.1, one axis angle per flake).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("instrument", sa.String(64), nullable=False),
        sa.Column("chip_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        *(
            sa.Column(name, sa.Float(), nullable=False)
            for name in (
                "region_x0_um",
                "region_y0_um",
                "region_x1_um",
                "region_y1_um",
                "overlap_pct",
                "pixel_size_um",
                "fov_width_um",
                "fov_height_um",
            )
        ),
        sa.Column("tiles_planned", sa.Integer(), nullable=False),
        sa.Column("tiles_done", sa.Integer(), nullable=False),
        sa.Column("flakes_found", sa.Integer(), nullable=False),
        sa.Column("classifier_model", sa.String(256), nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_scans_chip_id", "scans", ["chip_id"])
    op.create_index("ix_scans_status", "scans", ["status"])
    op.create_table(
        "tiles",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "scan_id", sa.Integer(), sa.ForeignKey("scans.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("tile_index", sa.Integer(), nullable=False),
        sa.Column("x_um", sa.Float(), nullable=False),
        sa.Column("y_um", sa.Float(), nullable=False),
        sa.Column("z_um", sa.Float(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("processed_at", sa.DateTime(), nullable=False),
        sa.Column("candidates", sa.Integer(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("processing_ms", sa.Float(), nullable=False),
        sa.Column("background_r", sa.Float(), nullable=False),
        sa.Column("background_g", sa.Float(), nullable=False),
        sa.Column("background_b", sa.Float(), nullable=False),
        sa.Column("skipped_reason", sa.Text(), nullable=False),
        sa.UniqueConstraint("scan_id", "tile_index"),
    )
    op.create_index("ix_tiles_scan_id", "tiles", ["scan_id"])
    op.create_table(
        "flakes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "scan_id", sa.Integer(), sa.ForeignKey("scans.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "tile_id", sa.Integer(), sa.ForeignKey("tiles.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("chip_id", sa.String(128), nullable=False),
        *(
            sa.Column(name, sa.Float(), nullable=False)
            for name in (
                "x_um",
                "y_um",
                "bbox_x0_um",
                "bbox_y0_um",
                "bbox_x1_um",
                "bbox_y1_um",
                "area_um2",
            )
        ),
        sa.Column("flake_class", sa.Integer(), nullable=False),
        *(
            sa.Column(name, sa.Float(), nullable=False)
            for name in (
                "score_class1",
                "score_class2",
                "score_class3",
                "score_any",
                "contrast_r",
                "contrast_g",
                "contrast_b",
            )
        ),
        sa.Column("contrast_class", sa.Integer(), nullable=False),
        sa.Column("axis_angle_deg", sa.Float(), nullable=True),
        sa.Column("axis_confidence", sa.Float(), nullable=True),
        sa.Column("touches_border", sa.Boolean(), nullable=False),
        sa.Column("thumbnail_path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_flakes_scan_id", "flakes", ["scan_id"])
    op.create_index("ix_flakes_tile_id", "flakes", ["tile_id"])
    op.create_index("ix_flakes_chip_id", "flakes", ["chip_id"])
    op.create_index("ix_flakes_class_area", "flakes", ["flake_class", "area_um2"])


def downgrade() -> None:
    raise NotImplementedError("catalogues are not downgraded: restore a backup")
