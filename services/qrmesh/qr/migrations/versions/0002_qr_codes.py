"""Stored QR codes, their short codes (kept forever, so none is reused), scan settings,
CreateQrCode request ids and the scan events already counted.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "qr"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables of stored codes."""
    op.create_table(
        "short_codes",
        sa.Column("short_code", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, nullable=False),
        sa.Column("qr_code_id", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("published_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("retired_at", TS),
        schema=SCHEMA,
    )
    op.create_index(
        "short_codes_unpublished",
        "short_codes",
        ["short_code"],
        schema=SCHEMA,
        postgresql_where=sa.text("published_version < version"),
    )
    op.create_index(
        "short_codes_organization_live",
        "short_codes",
        ["organization_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("retired_at IS NULL"),
    )

    op.create_table(
        "qr_codes",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False, server_default=""),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("design", sa.LargeBinary, nullable=False),
        sa.Column("folder", sa.Text, nullable=False, server_default=""),
        sa.Column("tags", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("tag_keys", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("short_code", sa.Text, sa.ForeignKey(f"{SCHEMA}.short_codes.short_code"), unique=True, nullable=True),
        sa.Column("rules", sa.LargeBinary, nullable=False, server_default=sa.text("''::bytea")),
        sa.Column("password_hash", sa.Text),
        sa.Column("max_scans", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("claimed_scans", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("redirect_type", sa.Text, nullable=False, server_default="FOUND"),
        sa.Column("scan_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint("kind IN ('STATIC', 'DYNAMIC')", name="qr_codes_kind_check"),
        sa.CheckConstraint("status IN ('ACTIVE', 'PAUSED', 'ARCHIVED')", name="qr_codes_status_check"),
        sa.CheckConstraint(
            "redirect_type IN ('FOUND', 'MOVED_PERMANENTLY', 'TEMPORARY_REDIRECT', 'PERMANENT_REDIRECT')",
            name="qr_codes_redirect_type_check",
        ),
        sa.CheckConstraint("(kind = 'DYNAMIC') = (short_code IS NOT NULL)", name="qr_codes_short_code_check"),
        sa.CheckConstraint("max_scans >= 0 AND claimed_scans >= 0", name="qr_codes_scans_check"),
        schema=SCHEMA,
    )
    op.create_index("qr_codes_by_create_time", "qr_codes", ["organization_id", "created_at", "id"], schema=SCHEMA)
    op.create_index("qr_codes_by_scan_count", "qr_codes", ["organization_id", "scan_count", "id"], schema=SCHEMA)
    op.create_index(
        "qr_codes_by_display_name",
        "qr_codes",
        ["organization_id", sa.text("lower(display_name)"), "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "qr_codes_by_folder",
        "qr_codes",
        ["organization_id", "folder"],
        schema=SCHEMA,
        postgresql_ops={"folder": "text_pattern_ops"},
    )
    op.create_index("qr_codes_tag_keys", "qr_codes", ["tag_keys"], schema=SCHEMA, postgresql_using="gin")

    op.create_table(
        "create_requests",
        sa.Column("organization_id", sa.Text, primary_key=True),
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("qr_code_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.qr_codes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("create_requests_created_at", "create_requests", ["created_at"], schema=SCHEMA)
    op.create_index("create_requests_qr_code_id", "create_requests", ["qr_code_id"], schema=SCHEMA)

    op.create_table(
        "scan_settings",
        sa.Column("organization_id", sa.Text, primary_key=True),
        sa.Column("store_full_ip_addresses", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", TS, nullable=False),
        schema=SCHEMA,
    )

    op.create_table(
        "counted_scans",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("counted_at", TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("counted_scans_counted_at", "counted_scans", ["counted_at"], schema=SCHEMA)


def downgrade() -> None:
    """Drop the tables of stored codes."""
    for table in ("counted_scans", "scan_settings", "create_requests", "qr_codes", "short_codes"):
        op.drop_table(table, schema=SCHEMA)
