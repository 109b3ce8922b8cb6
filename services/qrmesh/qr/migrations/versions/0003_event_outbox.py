"""The outbox of domain events (`qr_code.*`, `batch.completed`): written in the transaction of a change,
appended to the events stream after it commits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "qr"


def upgrade() -> None:
    """Create the event outbox."""
    op.create_table(
        "event_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("event", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the event outbox."""
    op.drop_table("event_outbox", schema=SCHEMA)
