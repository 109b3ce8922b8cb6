"""Bulk generation: batches, their rows (with the rendered image of each), row errors and batch templates.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "qr"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables of batches and batch templates."""
    op.create_table(
        "batches",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("total_rows", sa.Integer, nullable=False),
        sa.Column("valid_rows", sa.Integer, nullable=False),
        sa.Column("invalid_rows", sa.Integer, nullable=False),
        sa.Column("processed_rows", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("request_id", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("enqueued_at", TS),
        sa.Column("purged", sa.Boolean, nullable=False, server_default=sa.false()),
        # The Redis stream the batch's chunks go to: a sweeper re-queues only its own stream's batches.
        sa.Column("stream", sa.Text, nullable=False, server_default=""),
        schema=SCHEMA,
    )
    op.create_index("batches_by_organization", "batches", ["organization_id", "created_at", "id"], schema=SCHEMA)
    op.create_index(
        "batches_request_ids",
        "batches",
        ["organization_id", "request_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    op.create_index(
        "batches_active",
        "batches",
        ["state"],
        schema=SCHEMA,
        postgresql_where=sa.text("state IN ('VALIDATING', 'RUNNING')"),
    )
    op.create_table(
        "batch_rows",
        sa.Column("batch_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.batches.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("qr_code_id", sa.Text, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("short_code", sa.Text),
        sa.Column("image", sa.LargeBinary),
        sa.UniqueConstraint("batch_id", "row", name="batch_rows_row"),
        schema=SCHEMA,
    )
    op.create_index(
        "batch_rows_pending",
        "batch_rows",
        ["batch_id", "seq"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_table(
        "batch_row_errors",
        sa.Column("batch_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.batches.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("column", sa.Text, nullable=False),
        sa.Column("field", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "batch_templates",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "batch_templates_by_organization", "batch_templates", ["organization_id", "display_name", "id"], schema=SCHEMA
    )


def downgrade() -> None:
    """Drop the tables of batches and batch templates."""
    op.drop_table("batch_templates", schema=SCHEMA)
    op.drop_table("batch_row_errors", schema=SCHEMA)
    op.drop_table("batch_rows", schema=SCHEMA)
    op.drop_table("batches", schema=SCHEMA)
