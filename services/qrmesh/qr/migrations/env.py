"""Alembic environment for the qr schema."""

from qrmesh.platform import migrations

migrations.run(None)
