"""Alembic's environment for the catalogue, run by `flakescan.db.migrate`.

There is no alembic.ini: the Config is built in code and hands over the connection,
already inside the one transaction the whole upgrade runs in (fully upgraded or
untouched). SQLite gets batch mode (a table is copied to change a column).
"""

from __future__ import annotations

from alembic import context

from flakescan.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "flakescan's migrations run through flakescan.db.engine.open_database "
        "or `flakescan db upgrade`, which pass the connection"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
