"""Schema 3: outlines, shape figures, notes and flags.

Flakes logged before have no outline and no shape figures (NULL): not measured.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from flakescan.db.schema_history import legacy_columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, column in legacy_columns(3):
        op.add_column(table, column)


def downgrade() -> None:
    raise NotImplementedError("catalogues are not downgraded: restore a backup")
