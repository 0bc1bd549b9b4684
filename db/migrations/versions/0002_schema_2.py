"""Schema 2: both axis measurements (CNN and edges), and which one is shown.

Old rows keep their one axis angle; its source is recorded as the edges estimate.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from flakescan.db.schema_history import legacy_columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, column in legacy_columns(2):
        op.add_column(table, column)
    op.execute(
        "UPDATE flakes SET axis_source = 'edges', axis_edges_deg = axis_angle_deg, "
        "axis_edges_confidence = axis_confidence WHERE axis_angle_deg IS NOT NULL"
    )


def downgrade() -> None:
    raise NotImplementedError("catalogues are not downgraded: restore a backup")
