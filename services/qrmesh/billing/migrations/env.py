"""Alembic environment for the billing schema."""

from qrmesh.platform import migrations

migrations.run(None)
