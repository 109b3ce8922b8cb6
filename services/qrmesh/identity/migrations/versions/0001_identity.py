"""Identity schema: users, email tokens, sessions, signing keys, organizations, members, invitations,
API keys, the email outbox and idempotency records.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "identity"
TS = sa.DateTime(timezone=True)
ROLES = "role IN ('OWNER', 'ADMIN', 'EDITOR', 'VIEWER')"


def _fk(table: str, ondelete: str) -> sa.ForeignKey:
    return sa.ForeignKey(f"{SCHEMA}.{table}.id", ondelete=ondelete)


def upgrade() -> None:
    """Create every table of the identity service."""
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False, server_default=""),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("email_verified", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("password_changed_at", TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("users_email_key", "users", [sa.text("lower(email)")], unique=True, schema=SCHEMA)

    op.create_table(
        "email_tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, _fk("users", "CASCADE"), nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.CheckConstraint("purpose IN ('verify_email', 'reset_password')", name="email_tokens_purpose_check"),
        schema=SCHEMA,
    )
    op.create_index("ix_email_tokens_user_id", "email_tokens", ["user_id"], schema=SCHEMA)

    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column("family_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, _fk("users", "CASCADE"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("revoked_at", TS),
        schema=SCHEMA,
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"], schema=SCHEMA)
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"], schema=SCHEMA)

    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text, primary_key=True),
        sa.Column("private_key", sa.LargeBinary, nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("retired_at", TS),
        schema=SCHEMA,
    )

    op.create_table(
        "organizations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        schema=SCHEMA,
    )

    op.create_table(
        "memberships",
        sa.Column("organization_id", sa.Text, _fk("organizations", "CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Text, _fk("users", "CASCADE"), primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(ROLES, name="memberships_role_check"),
        schema=SCHEMA,
    )
    op.create_index("ix_memberships_user_id", "memberships", ["user_id"], schema=SCHEMA)

    op.create_table(
        "invitations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, _fk("organizations", "CASCADE"), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, _fk("users", "SET NULL")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("accepted_by", sa.Text, _fk("users", "SET NULL")),
        sa.Column("accepted_at", TS),
        sa.Column("revoked_at", TS),
        sa.CheckConstraint(ROLES, name="invitations_role_check"),
        sa.CheckConstraint("state IN ('PENDING', 'ACCEPTED', 'REVOKED')", name="invitations_state_check"),
        schema=SCHEMA,
    )
    op.create_index(
        "invitations_organization_created", "invitations", ["organization_id", "created_at", "id"], schema=SCHEMA
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, _fk("organizations", "CASCADE"), nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False, unique=True),
        sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("created_by", sa.Text, _fk("users", "SET NULL")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("last_used_at", TS),
        sa.Column("revoked_at", TS),
        schema=SCHEMA,
    )
    op.create_index("api_keys_organization_created", "api_keys", ["organization_id", "created_at", "id"], schema=SCHEMA)

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        schema=SCHEMA,
    )
    op.create_index(
        "outbox_unsent", "outbox", ["created_at"], schema=SCHEMA, postgresql_where=sa.text("sent_at IS NULL")
    )

    op.create_table(
        "request_ids",
        sa.Column("user_id", sa.Text, _fk("users", "CASCADE"), primary_key=True),
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, _fk("organizations", "CASCADE"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_request_ids_created_at", "request_ids", ["created_at"], schema=SCHEMA)


def downgrade() -> None:
    """Drop every table of the identity service."""
    for table in (
        "request_ids",
        "outbox",
        "api_keys",
        "invitations",
        "memberships",
        "organizations",
        "signing_keys",
        "refresh_tokens",
        "email_tokens",
        "users",
    ):
        op.drop_table(table, schema=SCHEMA)
