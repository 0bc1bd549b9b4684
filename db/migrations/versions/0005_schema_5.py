"""Schema 5: the share of each tile that was bare wafer (NULL before).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

from flakescan.db.schema_history import legacy_columns

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, column in legacy_columns(5):
        op.add_column(table, column)


def downgrade() -> None:
    raise NotImplementedError("catalogues are not downgraded: restore a backup")
