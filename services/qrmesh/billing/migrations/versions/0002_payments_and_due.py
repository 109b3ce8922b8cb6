"""Plan changes wait for their payment (the pending change and what was paid for the period), the job's
`next_due_at`, and the reason of each ledger entry (operator grants).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "billing"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the columns, fill `next_due_at` for existing rows and index it."""
    # A change to a paid plan waiting for the payment provider to confirm its payment.
    op.add_column(
        "subscriptions", sa.Column("pending_plan_id", sa.Text, sa.ForeignKey(f"{SCHEMA}.plans.id")), schema=SCHEMA
    )
    op.add_column("subscriptions", sa.Column("pending_amount_minor", sa.BigInteger), schema=SCHEMA)
    op.add_column("subscriptions", sa.Column("pending_credit_minor", sa.BigInteger), schema=SCHEMA)
    op.add_column("subscriptions", sa.Column("pending_at", TS), schema=SCHEMA)
    # The end of the period the pending amount was prorated for (NULL: it starts a new period).
    op.add_column("subscriptions", sa.Column("pending_period_end", TS), schema=SCHEMA)
    # Money (cash, or credit that came from cash) paid for the current period and not credited back yet:
    # credit for unused time never exceeds it.
    op.add_column(
        "subscriptions",
        sa.Column("period_paid_minor", sa.BigInteger, nullable=False, server_default="0"),
        schema=SCHEMA,
    )
    # When the job next has something to do for the row (lifecycle.next_due), written with every change.
    op.add_column("subscriptions", sa.Column("next_due_at", TS), schema=SCHEMA)
    op.create_check_constraint(
        "subscription_pending",
        "subscriptions",
        "(pending_plan_id IS NULL) = (pending_amount_minor IS NULL AND pending_credit_minor IS NULL "
        "AND pending_at IS NULL)",
        schema=SCHEMA,
    )
    op.create_check_constraint("subscription_period_paid", "subscriptions", "period_paid_minor >= 0", schema=SCHEMA)
    # The same as lifecycle.next_due, for rows written before the column existed.
    op.execute(
        f"""
        UPDATE {SCHEMA}.subscriptions AS s SET next_due_at = CASE
          WHEN s.status = 'PAST_DUE' THEN LEAST(s.grace_until, CASE WHEN s.cancel_at_period_end THEN s.period_end END)
          WHEN s.status = 'TRIALING' THEN LEAST(s.trial_end, CASE
            WHEN s.cancel_at_period_end OR s.scheduled_plan_id IS NOT NULL THEN s.period_end END)
          WHEN s.status = 'ACTIVE' AND (
            s.cancel_at_period_end OR s.scheduled_plan_id IS NOT NULL
            OR (SELECT p.price_minor FROM {SCHEMA}.plans AS p WHERE p.id = s.plan_id) > 0
          ) THEN s.period_end
        END
        """  # noqa: S608 - constants only
    )
    op.drop_index("subscriptions_due", table_name="subscriptions", schema=SCHEMA)
    op.create_index(
        "subscriptions_next_due",
        "subscriptions",
        ["next_due_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("next_due_at IS NOT NULL"),
    )
    op.add_column("plan_changes", sa.Column("reason", sa.Text, nullable=False, server_default=""), schema=SCHEMA)


def downgrade() -> None:
    """Drop them again."""
    op.drop_column("plan_changes", "reason", schema=SCHEMA)
    op.drop_index("subscriptions_next_due", table_name="subscriptions", schema=SCHEMA)
    op.create_index(
        "subscriptions_due",
        "subscriptions",
        ["status"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('TRIALING', 'ACTIVE', 'PAST_DUE')"),
    )
    op.drop_constraint("subscription_period_paid", "subscriptions", schema=SCHEMA)
    op.drop_constraint("subscription_pending", "subscriptions", schema=SCHEMA)
    for column in (
        "next_due_at",
        "period_paid_minor",
        "pending_period_end",
        "pending_at",
        "pending_credit_minor",
        "pending_amount_minor",
        "pending_plan_id",
    ):
        op.drop_column("subscriptions", column, schema=SCHEMA)
