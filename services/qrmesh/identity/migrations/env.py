"""Alembic environment for the identity schema."""

from qrmesh.identity.store import metadata
from qrmesh.platform import migrations

migrations.run(metadata)
