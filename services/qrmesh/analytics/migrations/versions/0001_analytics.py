"""The analytics schema: raw scans partitioned by month, hourly and daily rollups, daily visitors,
dead letters and per-organization retention.

- `scans`: one row per stored scan event (events of known codes only, every outcome, bots too),
  PARTITION BY RANGE (time), one partition per UTC month `scans_YYYYMM` (created by
  `qrmesh.analytics.partitions`; this migration creates the current month and the next two).
  PRIMARY KEY (time, event_id): a replayed event carries the same time, so ON CONFLICT DO NOTHING
  drops it.
- `rollup_hourly` / `rollup_daily`: scans and unique visitors per (organization, code, UTC hour or
  day, dimension, value, bot). Only REDIRECTED scans are counted (as the qr service's scan count).
  dimension is the `qrmesh.analytics.v1.Dimension` number, 0 is the total (value ''). Rows with
  qr_code_id '' hold the organization-wide sums; dimension QR_CODE (11, value = the code's id) is
  only in those rows. An unknown value (no region, no referrer) is the value ''. `uniques` of a
  code's rows count visitors new to the code that UTC day, of the organization's rows visitors new
  to the organization, except its QR_CODE rows, which count the code's own. In hourly rows a
  visitor's unique lands in the hour of their first scan that day.
- `daily_visitors`: the visitors already seen per UTC day: `visitor_key` is a 64-bit hash
  (`hashtextextended`) of "{organization}/{code}/{visitor}" for a code and "{organization}//{visitor}"
  for the organization; a scan whose key is new that day adds 1 to `uniques`. One bigint key instead
  of four text columns makes these inserts (up to two per scan) about 2.5 times cheaper (measured); a
  collision (odds about 3 in a million per day at 10 million keys a day) would miss one unique. Scans
  without a visitor id add no unique. Pruned after 3 days.
- `dead_letters`: stream entries that could not be processed, per stream.
- `organization_retention`: days of raw scans kept for organizations that differ from the default.

Text columns are COLLATE "C" (byte order).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from qrmesh.analytics import partitions

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "analytics"
TS = sa.DateTime(timezone=True)
TEXT = sa.Text(collation="C")
"""Every text column sorts and compares bytes: keys are ids and values, not prose, and btree inserts
and lookups skip the locale's collation (measured: index writes are a large part of ingestion)."""


def _rollup(name: str, bucket: sa.Column[object]) -> None:
    op.create_table(
        name,
        sa.Column("organization_id", TEXT, nullable=False),
        sa.Column("qr_code_id", TEXT, nullable=False),
        bucket,
        sa.Column("dimension", sa.SmallInteger, nullable=False),
        sa.Column("value", TEXT, nullable=False),
        sa.Column("bot", sa.Boolean, nullable=False),
        sa.Column("scans", sa.BigInteger, nullable=False),
        sa.Column("uniques", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "qr_code_id", bucket.name, "dimension", "value", "bot"),
        schema=SCHEMA,
        # Counters are updated in place all day: room on each page keeps those updates HOT (no new index entry).
        postgresql_with={"fillfactor": 70},
    )


def upgrade() -> None:
    """Create the analytics tables and the first partitions."""
    text = TEXT
    op.create_table(
        "scans",
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("organization_id", text, nullable=False),
        sa.Column("qr_code_id", text, nullable=False),
        sa.Column("short_code", text, nullable=False),
        sa.Column("outcome", sa.SmallInteger, nullable=False),
        sa.Column("destination_url", text, nullable=False),
        sa.Column("matched_rule", text, nullable=False),
        sa.Column("country", text, nullable=False),
        sa.Column("region", text, nullable=False),
        sa.Column("city", text, nullable=False),
        sa.Column("device_type", text, nullable=False),
        sa.Column("device_brand", text, nullable=False),
        sa.Column("os", text, nullable=False),
        sa.Column("browser", text, nullable=False),
        sa.Column("language", text, nullable=False),
        sa.Column("referrer", text, nullable=False),
        sa.Column("bot", sa.Boolean, nullable=False),
        sa.Column("visitor_id", text, nullable=False),
        sa.Column("ip_address", text, nullable=False),
        sa.Column("user_agent", text, nullable=False),
        sa.PrimaryKeyConstraint("time", "event_id"),
        schema=SCHEMA,
        postgresql_partition_by="RANGE (time)",
    )
    op.create_index("scans_organization_time", "scans", ["organization_id", "time"], schema=SCHEMA)
    op.create_index("scans_organization_code_time", "scans", ["organization_id", "qr_code_id", "time"], schema=SCHEMA)
    for month in partitions.months_ahead(datetime.now(UTC)):
        op.execute(partitions.create_statement(month))

    _rollup("rollup_hourly", sa.Column("hour", TS, nullable=False))
    _rollup("rollup_daily", sa.Column("day", sa.Date, nullable=False))

    op.create_table(
        "daily_visitors",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("visitor_key", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("day", "visitor_key"),
        schema=SCHEMA,
    )

    op.create_table(
        "dead_letters",
        sa.Column("stream", text, nullable=False),
        sa.Column("stream_id", text, nullable=False),
        sa.Column("reason", text, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("stream", "stream_id"),
        schema=SCHEMA,
    )
    op.create_index("dead_letters_time", "dead_letters", ["time", "stream", "stream_id"], schema=SCHEMA)

    op.create_table(
        "organization_retention",
        sa.Column("organization_id", text, primary_key=True),
        sa.Column("days", sa.Integer, nullable=False),
        sa.CheckConstraint("days > 0", name="organization_retention_days_positive"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the analytics tables (partitions go with their parent)."""
    for table in ("organization_retention", "dead_letters", "daily_visitors", "rollup_daily", "rollup_hourly", "scans"):
        op.drop_table(table, schema=SCHEMA)
