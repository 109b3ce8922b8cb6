"""Alert rules: create, read, change and delete an organization's rules (`analytics.alert_rules`).

Every change bumps `alerts.VERSION_KEY` after its commit, so the consumers' cached rules are read
again by their next batch.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as redis
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics.alerts import VERSION_KEY
from qrmesh.analytics.domain.alerts import MAX_RULES, Kind
from qrmesh.platform.errors import InvalidArgument, NotFound, ResourceExhausted
from qrmesh.platform.ids import uuid7

_COLUMNS = (
    "id, display_name, qr_code_id, kind, more_than, window_minutes, recipients, enabled, "
    "create_time, update_time, last_fired_time"
)


@dataclass(frozen=True, slots=True)
class RuleValues:
    """The changeable fields of a rule."""

    display_name: str
    qr_code_id: str
    kind: Kind
    more_than: int
    window_minutes: int
    recipients: tuple[str, ...]
    enabled: bool


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A rule as stored."""

    organization_id: str
    id: str
    values: RuleValues
    create_time: datetime
    update_time: datetime
    last_fired_time: datetime | None


def _stored(organization_id: str, record: Sequence[Any]) -> StoredRule:
    return StoredRule(
        organization_id=organization_id,
        id=record[0],
        values=RuleValues(
            display_name=record[1],
            qr_code_id=record[2],
            kind=Kind(record[3]),
            more_than=record[4],
            window_minutes=record[5],
            recipients=tuple(record[6]),
            enabled=record[7],
        ),
        create_time=record[8],
        update_time=record[9],
        last_fired_time=record[10],
    )


def encode_token(rule: StoredRule) -> str:
    return base64.urlsafe_b64encode(f"{rule.create_time.isoformat()}|{rule.id}".encode()).decode()


def decode_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        moment, rule_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        after = datetime.fromisoformat(moment)
        if after.tzinfo is None:
            raise ValueError("no time zone")
        return after, rule_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.field("pageToken", "is not a token this list gave", reason="INVALID_PAGE_TOKEN") from None


class AlertRules:
    """The rules in the database."""

    def __init__(self, engine: AsyncEngine, client: redis.Redis) -> None:
        self.engine = engine
        self.redis = client

    async def _announce(self) -> None:
        await self.redis.incr(VERSION_KEY)

    async def create(self, organization_id: str, values: RuleValues, request_id: str) -> StoredRule:
        """A new rule; the first one created with `request_id` when it is set."""
        now = datetime.now(UTC)
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            async with pg.transaction():
                # Serializes creations in one organization, so the limit holds under concurrent calls.
                await pg.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('qrmesh:alert-rules:' || $1, 0))", organization_id
                )
                if request_id:
                    found = await pg.fetchrow(
                        f"SELECT {_COLUMNS} FROM analytics.alert_rules "  # noqa: S608
                        "WHERE organization_id = $1 AND request_id = $2",
                        organization_id,
                        request_id,
                    )
                    if found is not None:
                        return _stored(organization_id, found)
                count = await pg.fetchval(
                    "SELECT count(*) FROM analytics.alert_rules WHERE organization_id = $1", organization_id
                )
                if count >= MAX_RULES:
                    raise ResourceExhausted(
                        f"an organization has at most {MAX_RULES} alert rules; delete one first",
                        reason="ALERT_RULE_LIMIT",
                    )
                record = await pg.fetchrow(
                    "INSERT INTO analytics.alert_rules (organization_id, id, display_name, qr_code_id, kind, "  # noqa: S608
                    "more_than, window_minutes, recipients, enabled, create_time, update_time, request_id) "
                    f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11) RETURNING {_COLUMNS}",
                    organization_id,
                    uuid7(),
                    values.display_name,
                    values.qr_code_id,
                    int(values.kind),
                    values.more_than,
                    values.window_minutes,
                    list(values.recipients),
                    values.enabled,
                    now,
                    request_id,
                )
        await self._announce()
        return _stored(organization_id, record)

    async def get(self, organization_id: str, rule_id: str) -> StoredRule:
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            record = await pg.fetchrow(
                f"SELECT {_COLUMNS} FROM analytics.alert_rules WHERE organization_id = $1 AND id = $2",  # noqa: S608
                organization_id,
                rule_id,
            )
        if record is None:
            raise NotFound(
                f"organizations/{organization_id}/alertRules/{rule_id} does not exist", reason="ALERT_RULE_NOT_FOUND"
            )
        return _stored(organization_id, record)

    async def list(self, organization_id: str, page_size: int, page_token: str) -> tuple[list[StoredRule], str]:
        size = page_size or 50
        after = decode_token(page_token)
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            records = await pg.fetch(
                f"SELECT {_COLUMNS} FROM analytics.alert_rules WHERE organization_id = $1 "  # noqa: S608
                "AND ($2::timestamptz IS NULL OR (create_time, id) > ($2, $3)) ORDER BY create_time, id LIMIT $4",
                organization_id,
                after[0] if after else None,
                after[1] if after else "",
                size + 1,
            )
        rules = [_stored(organization_id, record) for record in records[:size]]
        return rules, encode_token(rules[-1]) if len(records) > size else ""

    async def update(self, organization_id: str, rule_id: str, values: RuleValues) -> StoredRule:
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            record = await pg.fetchrow(
                "UPDATE analytics.alert_rules SET display_name = $3, qr_code_id = $4, kind = $5, more_than = $6, "  # noqa: S608
                "window_minutes = $7, recipients = $8, enabled = $9, update_time = $10 "
                f"WHERE organization_id = $1 AND id = $2 RETURNING {_COLUMNS}",
                organization_id,
                rule_id,
                values.display_name,
                values.qr_code_id,
                int(values.kind),
                values.more_than,
                values.window_minutes,
                list(values.recipients),
                values.enabled,
                datetime.now(UTC),
            )
        if record is None:
            raise NotFound(
                f"organizations/{organization_id}/alertRules/{rule_id} does not exist", reason="ALERT_RULE_NOT_FOUND"
            )
        await self._announce()
        return _stored(organization_id, record)

    async def delete(self, organization_id: str, rule_id: str) -> None:
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            status = await pg.execute(
                "DELETE FROM analytics.alert_rules WHERE organization_id = $1 AND id = $2", organization_id, rule_id
            )
        if status.endswith(" 0"):
            raise NotFound(
                f"organizations/{organization_id}/alertRules/{rule_id} does not exist", reason="ALERT_RULE_NOT_FOUND"
            )
        await self._announce()
