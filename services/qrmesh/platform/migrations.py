"""The body of every service's Alembic `env.py`.

A service's env.py calls `run(metadata)`. The connection and schema come from
`qrmesh.platform.database.migrate`, which runs Alembic inside the service's own
event loop; offline mode writes SQL for review.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData


def run(metadata: MetaData | None) -> None:
    """Run migrations online (through the given connection) or offline (as SQL)."""
    config = context.config
    schema = config.attributes.get("schema")
    connection = config.attributes.get("connection")
    if connection is None:
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            version_table_schema=schema,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        include_schemas=False,
    )
    with context.begin_transaction():
        context.run_migrations()
