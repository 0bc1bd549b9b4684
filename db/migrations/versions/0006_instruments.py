"""Schema 6: several microscopes, one catalogue. Every row gets `instrument` (the daemon's
config.instrument) and `uuid` (a UUID4, the key a lab-wide catalogue merges rows by);
the integer ids stay (people say "flake 17").

Old tiles, flakes and flake images take their scan's instrument (scans always had one);
old rows get fresh uuids here. On SQLite the NOT NULL change copies each table (batch).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from uuid import uuid4

import sqlalchemy as sa
from alembic import op

from flakescan.db.schema_history import create_flake_images

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# table -> how an old row finds its instrument (None: it has one)
_INSTRUMENT_FROM = {
    "scans": None,
    "tiles": "SELECT s.instrument FROM scans s WHERE s.id = tiles.scan_id",
    "flakes": "SELECT s.instrument FROM scans s WHERE s.id = flakes.scan_id",
    "flake_images": "SELECT f.instrument FROM flakes f WHERE f.id = flake_images.flake_id",
}


def _fill_uuids(table: str) -> None:
    t = sa.table(table, sa.column("id", sa.Integer), sa.column("uuid", sa.String))
    bind = op.get_bind()
    ids = bind.execute(sa.select(t.c.id).where(t.c.uuid.is_(None))).scalars().all()
    if ids:
        stmt = t.update().where(t.c.id == sa.bindparam("b_id")).values(uuid=sa.bindparam("b_u"))
        bind.execute(stmt, [{"b_id": i, "b_u": str(uuid4())} for i in ids])


def upgrade() -> None:
    create_flake_images()
    for table, source in _INSTRUMENT_FROM.items():
        with op.batch_alter_table(table) as b:
            if source is not None:
                b.add_column(sa.Column("instrument", sa.String(64), nullable=True))
            b.add_column(sa.Column("uuid", sa.String(36), nullable=True))
        if source is not None:
            op.execute(f"UPDATE {table} SET instrument = COALESCE(({source}), 'default')")
        _fill_uuids(table)
        with op.batch_alter_table(table) as b:
            if source is not None:
                b.alter_column("instrument", existing_type=sa.String(64), nullable=False)
            b.alter_column("uuid", existing_type=sa.String(36), nullable=False)
            b.create_index(f"ix_{table}_instrument", ["instrument"])
            b.create_index(f"ix_{table}_uuid", ["uuid"], unique=True)


def downgrade() -> None:
    raise NotImplementedError("catalogues are not downgraded: restore a backup")
