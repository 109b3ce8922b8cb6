"""Alembic environment for the analytics schema."""

from qrmesh.platform import migrations

migrations.run(None)
