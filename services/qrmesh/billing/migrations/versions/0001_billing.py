"""Plans and their entitlements (seeded), subscriptions, the plan change ledger and the payment
provider events already applied.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "billing"
TS = sa.DateTime(timezone=True)

# (name, kind, description)
ENTITLEMENTS = [
    ("dynamic_codes", "LIMIT", "Dynamic QR codes the organization may have."),
    ("analytics_retention_days", "LIMIT", "Days raw scans are kept for analytics."),
    (
        "design.full",
        "FEATURE",
        "The full design: logos, gradients, frames and custom finder patterns (basic design is colors, "
        "module shape, quiet zone and error correction).",
    ),
    ("rules.password", "FEATURE", "Passwords on dynamic codes."),
    ("rules.schedule", "FEATURE", "Opening hours and time windows on dynamic codes."),
    ("bulk_rows", "LIMIT", "Rows of one bulk creation."),
    ("api_access", "FEATURE", "API keys."),
    ("team_members", "LIMIT", "Members of the organization, pending invitations included."),
    ("webhooks", "FEATURE", "Webhooks."),
    ("custom_domains", "FEATURE", "Short links on the organization's own domains."),
    ("white_label", "FEATURE", "Pages without qrmesh branding."),
    ("sso", "FEATURE", "Single sign-on."),
    ("api_rate_per_second", "LIMIT", "Requests per second each user or API key may make."),
    ("api_burst", "LIMIT", "Requests each user or API key may make at once above the rate."),
]

# (id, display name, description, price in cents (USD) per month, rank)
PLANS = [
    ("free", "Free", "Static codes and a few dynamic ones, to try qrmesh.", 0, 0),
    ("pro", "Pro", "For one person's campaigns: many dynamic codes, full design, rules and the API.", 1900, 1),
    ("business", "Business", "For teams: unlimited codes, webhooks, bulk creation and custom domains.", 4900, 2),
    ("enterprise", "Enterprise", "Everything, with white label and single sign-on.", 14900, 3),
]

UNLIMITED = None
# entitlement -> value per plan (free, pro, business, enterprise); features 0/1, limits a count or UNLIMITED.
VALUES: dict[str, tuple[int | None, int | None, int | None, int | None]] = {
    "dynamic_codes": (10, 500, UNLIMITED, UNLIMITED),
    "analytics_retention_days": (30, 365, 1095, 3650),
    "design.full": (0, 1, 1, 1),
    "rules.password": (0, 1, 1, 1),
    "rules.schedule": (0, 1, 1, 1),
    "bulk_rows": (0, 1000, 100_000, 1_000_000),
    "api_access": (0, 1, 1, 1),
    "team_members": (1, 1, 25, UNLIMITED),
    "webhooks": (0, 0, 1, 1),
    "custom_domains": (0, 0, 1, 1),
    "white_label": (0, 0, 0, 1),
    "sso": (0, 0, 0, 1),
    "api_rate_per_second": (10, 25, 100, 500),
    "api_burst": (50, 100, 300, 1000),
}


def upgrade() -> None:
    """Create the tables and seed the plans."""
    definitions = op.create_table(
        "entitlement_definitions",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.CheckConstraint("kind IN ('FEATURE', 'LIMIT')", name="entitlement_kind"),
        schema=SCHEMA,
    )
    plans = op.create_table(
        "plans",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("price_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False, unique=True),
        sa.CheckConstraint("price_minor >= 0", name="plan_price"),
        schema=SCHEMA,
    )
    plan_entitlements = op.create_table(
        "plan_entitlements",
        sa.Column("plan_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.plans.id"), primary_key=True),
        sa.Column("name", sa.Text, sa.ForeignKey(f"{SCHEMA}.entitlement_definitions.name"), primary_key=True),
        # FEATURE: 0 or 1. LIMIT: the most allowed, NULL for unlimited.
        sa.Column("value", sa.BigInteger),
        sa.CheckConstraint("value IS NULL OR value >= 0", name="entitlement_value"),
        schema=SCHEMA,
    )
    op.create_table(
        "subscriptions",
        sa.Column("organization_id", sa.Text, primary_key=True),
        sa.Column("plan_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.plans.id"), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("period_start", TS),
        sa.Column("period_end", TS),
        sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("scheduled_plan_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.plans.id")),
        sa.Column("trial_end", TS),
        sa.Column("past_due_since", TS),
        sa.Column("grace_until", TS),
        sa.Column("ended_at", TS),
        sa.Column("credit_minor", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("provider", sa.Text, nullable=False, server_default=""),
        sa.Column("provider_customer_id", sa.Text),
        sa.Column("provider_subscription_id", sa.Text, unique=True),
        sa.Column("provider_event_at", TS),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "status IN ('TRIALING', 'ACTIVE', 'PAST_DUE', 'CANCELED', 'SUSPENDED')", name="subscription_status"
        ),
        sa.CheckConstraint("credit_minor >= 0", name="subscription_credit"),
        schema=SCHEMA,
    )
    # The job looks for live subscriptions with something due.
    op.create_index(
        "subscriptions_due",
        "subscriptions",
        ["status"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('TRIALING', 'ACTIVE', 'PAST_DUE')"),
    )
    op.create_table(
        "plan_changes",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("organization_id", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False, server_default=""),
        sa.Column("from_plan", sa.Text, nullable=False),
        sa.Column("to_plan", sa.Text, nullable=False),
        sa.Column("at_period_end", sa.Boolean, nullable=False),
        sa.Column("amount_due_minor", sa.BigInteger, nullable=False),
        sa.Column("change", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "plan_changes_request",
        "plan_changes",
        ["organization_id", "request_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("request_id <> ''"),
    )
    op.create_table(
        "provider_events",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        schema=SCHEMA,
    )

    op.bulk_insert(
        definitions, [{"name": name, "kind": kind, "description": text} for name, kind, text in ENTITLEMENTS]
    )
    op.bulk_insert(
        plans,
        [
            {
                "id": plan,
                "display_name": display,
                "description": text,
                "price_minor": price,
                "currency": "USD",
                "rank": rank,
            }
            for plan, display, text, price, rank in PLANS
        ],
    )
    op.bulk_insert(
        plan_entitlements,
        [
            {"plan_id": plan, "name": name, "value": values[rank]}
            for name, values in VALUES.items()
            for plan, _, _, _, rank in PLANS
        ],
    )


def downgrade() -> None:
    """Drop everything."""
    for table in ("provider_events", "plan_changes", "subscriptions", "plan_entitlements", "plans"):
        op.drop_table(table, schema=SCHEMA)
    op.drop_table("entitlement_definitions", schema=SCHEMA)
