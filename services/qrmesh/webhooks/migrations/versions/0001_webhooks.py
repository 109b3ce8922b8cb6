"""Webhooks, their deliveries (the delivery queue) and every attempt, create request ids, and the scans
already delivered to each webhook.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


TABLES = """
        CREATE TABLE webhooks.webhooks (
            id text PRIMARY KEY,
            organization_id text NOT NULL,
            display_name text NOT NULL DEFAULT '',
            url text NOT NULL,
            event_types text[] NOT NULL,
            qr_codes text[] NOT NULL DEFAULT '{}',
            enabled boolean NOT NULL DEFAULT true,
            state text NOT NULL DEFAULT 'ACTIVE' CHECK (state IN ('ACTIVE', 'FAILING', 'DISABLED')),
            contact_email text NOT NULL DEFAULT '',
            -- The signing secret as issued (whsec_...): deliveries need it for HMAC, so it cannot be hashed.
            -- Only this service reads this schema. The API never returns it after creation.
            secret text NOT NULL,
            -- Which QRMESH_WEBHOOKS_SECRET_KEY sealed `secret` ('' when stored as issued): a process claims only
            -- deliveries whose secret it can open.
            secret_key_id text NOT NULL DEFAULT '',
            last_error text NOT NULL DEFAULT '',
            create_time timestamptz NOT NULL,
            update_time timestamptz NOT NULL
        );
        CREATE INDEX webhooks_by_organization ON webhooks.webhooks (organization_id, create_time DESC, id DESC);

        CREATE TABLE webhooks.create_requests (
            organization_id text NOT NULL,
            request_id text NOT NULL,
            webhook_id text NOT NULL,
            create_time timestamptz NOT NULL,
            PRIMARY KEY (organization_id, request_id)
        );

        CREATE TABLE webhooks.deliveries (
            id uuid PRIMARY KEY,
            webhook_id text NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
            organization_id text NOT NULL,
            event_id text NOT NULL,
            event_type text NOT NULL,
            payload text NOT NULL,
            traceparent text NOT NULL DEFAULT '',
            tracestate text NOT NULL DEFAULT '',
            state text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'SUCCEEDED', 'FAILED')),
            attempt_count integer NOT NULL DEFAULT 0,
            round_start integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz,
            lease_until timestamptz,
            -- The claim that holds the lease: only that claim's result is recorded on the delivery.
            lease_id uuid,
            create_time timestamptz NOT NULL,
            update_time timestamptz NOT NULL,
            UNIQUE (webhook_id, event_id)
        );
        CREATE INDEX deliveries_due ON webhooks.deliveries (next_attempt_at) WHERE state = 'PENDING';
        CREATE INDEX deliveries_by_webhook ON webhooks.deliveries (webhook_id, create_time DESC, id DESC);

        CREATE TABLE webhooks.attempts (
            delivery_id uuid NOT NULL REFERENCES webhooks.deliveries (id) ON DELETE CASCADE,
            attempt_number integer NOT NULL,
            time timestamptz NOT NULL,
            status_code integer NOT NULL,
            latency_ms integer NOT NULL,
            response_excerpt text NOT NULL DEFAULT '',
            error text NOT NULL DEFAULT '',
            next_attempt_at timestamptz,
            PRIMARY KEY (delivery_id, attempt_number)
        );

        CREATE TABLE webhooks.delivered_scans (
            webhook_id text NOT NULL REFERENCES webhooks.webhooks (id) ON DELETE CASCADE,
            scan_id text NOT NULL,
            create_time timestamptz NOT NULL,
            PRIMARY KEY (webhook_id, scan_id)
        );
        CREATE INDEX delivered_scans_by_time ON webhooks.delivered_scans (create_time);
"""


def upgrade() -> None:
    """Create the tables (one statement at a time: asyncpg prepares each)."""
    for statement in TABLES.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    """Drop the tables."""
    op.execute(
        "DROP TABLE webhooks.delivered_scans, webhooks.attempts, webhooks.deliveries, webhooks.create_requests, "
        "webhooks.webhooks"
    )
