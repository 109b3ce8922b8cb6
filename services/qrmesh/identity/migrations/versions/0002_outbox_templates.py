"""Structured outbox mail: the template a mail is rendered with, its variables, a stable mail id and the
producer's trace context, so the outbox relay can hand each row to the mailer as a `qrmesh.events.v1.Mail`.
The subject and text body stay as the plain fallback (and for rows queued before this revision).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "identity"


def upgrade() -> None:
    """Add template, variables, mail id, organization and trace context; the relay drains unsent rows by id."""
    op.add_column("outbox", sa.Column("mail_id", sa.Text), schema=SCHEMA)
    op.add_column("outbox", sa.Column("template", sa.Text), schema=SCHEMA)
    op.add_column(
        "outbox",
        sa.Column("variables", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=SCHEMA,
    )
    op.add_column("outbox", sa.Column("organization", sa.Text, nullable=False, server_default=""), schema=SCHEMA)
    op.add_column("outbox", sa.Column("traceparent", sa.Text, nullable=False, server_default=""), schema=SCHEMA)
    op.add_column("outbox", sa.Column("tracestate", sa.Text, nullable=False, server_default=""), schema=SCHEMA)
    op.drop_index("outbox_unsent", table_name="outbox", schema=SCHEMA)
    op.create_index("outbox_unsent", "outbox", ["id"], schema=SCHEMA, postgresql_where=sa.text("sent_at IS NULL"))


def downgrade() -> None:
    """Back to text-only outbox rows."""
    op.drop_index("outbox_unsent", table_name="outbox", schema=SCHEMA)
    op.create_index(
        "outbox_unsent", "outbox", ["created_at"], schema=SCHEMA, postgresql_where=sa.text("sent_at IS NULL")
    )
    for column in ("tracestate", "traceparent", "organization", "variables", "template", "mail_id"):
        op.drop_column("outbox", column, schema=SCHEMA)
