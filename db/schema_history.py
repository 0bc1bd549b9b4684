"""What each schema version before alembic added, kept as data.

Schemas 1 to 5 were applied by hand (PRAGMA user_version); they are alembic revisions
0001-0005 now, and this table is what revisions 0002, 0003 and 0005 add. The tests take
the same columns off again to make the files an older flakescan wrote.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "LEGACY_COLUMNS",
    "LEGACY_SCHEMA",
    "LEGACY_TABLES",
    "create_flake_images",
    "legacy_columns",
]

# The last schema version applied without alembic: files at user_version 1..5 and no
# alembic_version table are stamped at revision "000N" and upgraded from there.
LEGACY_SCHEMA = 5

# version -> (table, column, type, server default); nullable unless a default is given.
LEGACY_COLUMNS: dict[int, tuple[tuple[str, str, sa.types.TypeEngine, object], ...]] = {
    2: (
        ("flakes", "axis_source", sa.String(16), None),
        ("flakes", "axis_cnn_deg", sa.Float(), None),
        ("flakes", "axis_cnn_confidence", sa.Float(), None),
        ("flakes", "axis_edges_deg", sa.Float(), None),
        ("flakes", "axis_edges_confidence", sa.Float(), None),
    ),
    3: (
        ("flakes", "outline_json", sa.Text(), ""),
        *(
            ("flakes", name, sa.Float(), None)
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
        ("flakes", "notes", sa.Text(), ""),
        ("flakes", "used", sa.Boolean(), sa.false()),
        ("flakes", "favourite", sa.Boolean(), sa.false()),
        ("flakes", "annotated_at", sa.DateTime(), None),
    ),
    5: (("tiles", "background_fraction", sa.Float(), None),),
}

# version -> tables it created
LEGACY_TABLES: dict[int, tuple[str, ...]] = {4: ("flake_images",)}


def legacy_columns(version: int) -> list[tuple[str, sa.Column]]:
    """Fresh Column objects (a Column belongs to one table once used) for `version`."""
    return [
        (
            table,
            sa.Column(name, type_, nullable=default is None, server_default=default),
        )
        for table, name, type_, default in LEGACY_COLUMNS.get(version, ())
    ]


def create_flake_images() -> None:
    """Schema 4's table, if absent: before alembic it came from create_all, which a
    catalogue opened with create=False skipped while its user_version still went up, so a
    file at 4 or 5 may lack it (revision 0006 calls this again for those)."""
    from alembic import op

    if sa.inspect(op.get_bind()).has_table("flake_images"):
        return
    op.create_table(
        "flake_images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "flake_id",
            sa.Integer(),
            sa.ForeignKey("flakes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("objective", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("x_um", sa.Float(), nullable=False),
        sa.Column("y_um", sa.Float(), nullable=False),
        sa.Column("z_um", sa.Float(), nullable=False),
        sa.Column("pixel_size_um", sa.Float(), nullable=False),
        sa.Column("focus", sa.String(16), nullable=False),
        sa.Column("registered", sa.Boolean(), nullable=False),
        sa.Column("shift_x_um", sa.Float(), nullable=False),
        sa.Column("shift_y_um", sa.Float(), nullable=False),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_flake_images_flake_id", "flake_images", ["flake_id"])
