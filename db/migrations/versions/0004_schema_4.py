"""Schema 4: images of flakes taken on revisits at a higher magnification.

Before alembic, flake_images came from create_all, which a catalogue opened with
create=False skipped while its user_version still went up: such a file is at 4 or 5
without the table, so it is created here only if absent.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from flakescan.db.schema_history import create_flake_images

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_flake_images()


def downgrade() -> None:
    raise NotImplementedError("catalogues are not downgraded: restore a backup")
