"""Alembic environment for the webhooks schema."""

from qrmesh.platform import migrations

migrations.run(None)
