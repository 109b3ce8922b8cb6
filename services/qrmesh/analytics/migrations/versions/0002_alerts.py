"""Scan alerts: alert rules and their firings.

- `alert_rules`: one row per rule of an organization. `qr_code_id` '' watches every code of the
  organization. `kind` 1 is a threshold ("more than `more_than` scans in `window_minutes`"), 2 a
  first scan. `request_id` (or '') makes creation idempotent per organization.
- `alert_firings`: one row per firing, unique per (rule, key): a threshold rule's key is the time
  of the scan that crossed it (ISO 8601), a first-scan rule's the code's id, so an evaluation
  repeated after a crash or a redelivered batch never fires twice. `delivered_time` is set once
  the event and mails are on their streams; firings left undelivered (a crash in between) are
  sent again by the next evaluation round. Deleted with their rule.

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

SCHEMA = "analytics"
TS = sa.DateTime(timezone=True)
TEXT = sa.Text(collation="C")


def upgrade() -> None:
    """Create the alert tables."""
    op.create_table(
        "alert_rules",
        sa.Column("organization_id", TEXT, nullable=False),
        sa.Column("id", TEXT, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("qr_code_id", TEXT, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("more_than", sa.Integer, nullable=False),
        sa.Column("window_minutes", sa.Integer, nullable=False),
        sa.Column("recipients", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.Column("last_fired_time", TS, nullable=True),
        sa.Column("request_id", TEXT, nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "id"),
        sa.CheckConstraint("kind IN (1, 2)", name="alert_rules_kind"),
        schema=SCHEMA,
    )
    op.create_index(
        "alert_rules_request",
        "alert_rules",
        ["organization_id", "request_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("request_id <> ''"),
    )
    op.create_table(
        "alert_firings",
        sa.Column("organization_id", TEXT, nullable=False),
        sa.Column("rule_id", TEXT, nullable=False),
        sa.Column("key", TEXT, nullable=False),
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("trigger_time", TS, nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("qr_code_id", TEXT, nullable=False),
        sa.Column("short_code", TEXT, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("fired_time", TS, nullable=False),
        sa.Column("delivered_time", TS, nullable=True),
        sa.PrimaryKeyConstraint("organization_id", "rule_id", "key"),
        sa.ForeignKeyConstraint(
            ["organization_id", "rule_id"],
            [f"{SCHEMA}.alert_rules.organization_id", f"{SCHEMA}.alert_rules.id"],
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "alert_firings_rule_time", "alert_firings", ["organization_id", "rule_id", "trigger_time"], schema=SCHEMA
    )
    op.create_index(
        "alert_firings_undelivered",
        "alert_firings",
        ["fired_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("delivered_time IS NULL"),
    )


def downgrade() -> None:
    """Drop the alert tables."""
    op.drop_table("alert_firings", schema=SCHEMA)
    op.drop_table("alert_rules", schema=SCHEMA)
