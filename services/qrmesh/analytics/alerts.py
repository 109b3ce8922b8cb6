"""Scan alerts: evaluation of the organizations' alert rules after each ingested batch, and delivery of
their firings as `scan.threshold_reached` events and `scan_alert` mails.

How it stays cheap: the consumer hands every batch's counted scans (REDIRECTED, not bots) to
`AlertEvaluator.evaluate` after the batch's commit, before the batch is acknowledged. Rules are
cached per organization in memory for RULES_TTL seconds; every change to a rule bumps a Redis
counter (VERSION_KEY) that each batch reads once (one GET), so a change is seen by the next batch.
An organization without enabled rules costs a dictionary lookup.

How it stays exact: evaluation reads the database (raw scans, indexed by organization, code and
time) after the commit, so it sees every scan committed before it, whichever consumer stored it.
Each rule's decision runs in a transaction holding an advisory lock on the rule and records a row
in `alert_firings` (unique per rule and key) before anything is sent: evaluating the same scans
twice (a batch redelivered after a crash between commit and acknowledgement, or two consumers
whose batches overlap in time) fires once. The consumer hands over the batch's duplicates too, so
a batch whose evaluation was lost in a crash is evaluated when it is redelivered. The event and the
mails are appended after that transaction and the firing is marked delivered; firings left
undelivered (a crash in between) are sent again by the redelivery loop after REDELIVER_AFTER, with
the same event id and mail ids (consumers handle each id once).

- Threshold rules ("more than N in M minutes"): the database counts, for every counted scan of the
  scope in [earliest new scan, latest new scan + M], the counted scans in [its time - M, its time];
  those with more than N are crossings, and `domain.alerts.select_firings` keeps those at least M
  away from every firing of the rule (one firing per window). Late scans are handled: a crossing
  at a scan stored earlier whose window a late scan completes fires too.
  Before that query, a pre-check counts the scope's scans in the same range from the index alone,
  stopping at N + 1: with no more than N there, no window can cross and the query is skipped.
- A rule whose evaluation fails is logged and counted (`qrmesh_analytics_alert_rule_failures`); the
  batch's other rules are still evaluated.
- First-scan rules: for each code of the batch in scope, its earliest scan of the batch fires when
  no counted scan of the code is stored before it (raw scans, and daily rollups for days whose raw
  scans the retention deleted) and it is not older than the rule.
"""

from __future__ import annotations

import asyncio
import logging
import time as clock
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import redis.asyncio as redis
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics.domain.alerts import Crossing, Kind, Rule, select_firings, threshold_key, window_words
from qrmesh.analytics.enrich import Prepared
from qrmesh.events.v1 import event_pb2
from qrmesh.platform import events, tasks
from qrmesh.platform.ids import uuid7
from qrmesh.platform.metrics import REGISTRY

log = logging.getLogger("qrmesh.analytics.alerts")

EVENT_TYPE = "scan.threshold_reached"
MAIL_TEMPLATE = "scan_alert"
VERSION_KEY = "qrmesh:analytics:alert-rules:version"
"""Bumped (INCR) on every change to any alert rule; evaluators drop their cache when it moves."""
RULES_TTL = 30.0
"""Seconds an organization's cached rules are trusted without a change being announced."""
REDELIVER_EVERY = 15.0
REDELIVER_AFTER = timedelta(seconds=30)
"""Firings still undelivered this long after they were recorded are sent again."""
MAX_CROSSINGS = 10_000
"""Crossings read per rule and batch at most (the earliest; one firing per window needs few)."""
_MAIL_NAMESPACE = uuid.UUID("6f1f3c8e-2b0a-4d55-9a57-1d7f0c3e5a11")

_COLUMNS = (
    "organization_id, id, display_name, qr_code_id, kind, more_than, window_minutes, recipients, enabled, create_time"
)
RULES_OF = f"SELECT {_COLUMNS} FROM analytics.alert_rules WHERE organization_id = ANY($1::text[]) AND enabled"  # noqa: S608
LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('qrmesh:alert:' || $1 || '/' || $2, 0))"
_CROSSINGS = """
SELECT time, n, qr_code_id, short_code FROM (
    SELECT time, qr_code_id, short_code,
           count(*) OVER (ORDER BY time RANGE BETWEEN make_interval(mins => $3) PRECEDING AND CURRENT ROW) AS n
    FROM analytics.scans
    WHERE organization_id = $1 {code} AND outcome = 1 AND NOT bot AND time >= $4 AND time <= $5
) w WHERE time >= $6 AND n > $7 ORDER BY time LIMIT {limit}
"""
CROSSINGS_OF_ORGANIZATION = _CROSSINGS.format(code="AND $2::text = $2::text", limit=MAX_CROSSINGS)
CROSSINGS_OF_CODE = _CROSSINGS.format(code="AND qr_code_id = $2", limit=MAX_CROSSINGS)
# The pre-check of a threshold rule: at most $5 scans of the scope (any outcome, bots too: an upper bound of the
# counted ones, read from the index alone) in the range the crossings query reads. Every window it counts lies in
# that range, so when there are no more than N scans there, no window has more than N and the query is skipped.
_SCANS_IN_RANGE = """
SELECT count(*) FROM (
    SELECT 1 FROM analytics.scans WHERE organization_id = $1 {code} AND time >= $3 AND time <= $4 LIMIT $5
) s
"""
SCANS_OF_ORGANIZATION = _SCANS_IN_RANGE.format(code="AND $2::text = $2::text")
SCANS_OF_CODE = _SCANS_IN_RANGE.format(code="AND qr_code_id = $2")
RULE_FAILURES = Counter(
    "qrmesh_analytics_alert_rule_failures",
    "Alert rule evaluations that failed (the batch's other rules are still evaluated).",
    registry=REGISTRY,
)
FIRED_NEAR = (
    "SELECT trigger_time FROM analytics.alert_firings "
    "WHERE organization_id = $1 AND rule_id = $2 AND trigger_time > $3 AND trigger_time < $4"
)
FIRSTS = """
SELECT c.code FROM unnest($2::text[], $3::timestamptz[], $4::uuid[]) AS c(code, time, event_id)
WHERE NOT EXISTS (
    SELECT 1 FROM analytics.scans s
    WHERE s.organization_id = $1 AND s.qr_code_id = c.code AND s.outcome = 1 AND NOT s.bot
      AND (s.time, s.event_id) < (c.time, c.event_id)
) AND NOT EXISTS (
    SELECT 1 FROM analytics.rollup_daily r
    WHERE r.organization_id = $1 AND r.qr_code_id = c.code AND r.dimension = 0 AND r.value = '' AND NOT r.bot
      AND r.day < (c.time AT TIME ZONE 'UTC')::date
)
"""
INSERT_FIRINGS = """
INSERT INTO analytics.alert_firings
    (organization_id, rule_id, key, id, trigger_time, window_start, qr_code_id, short_code, count, fired_time)
SELECT $1, $2, * FROM unnest($3::text[], $4::uuid[], $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[],
                             $9::bigint[], $10::timestamptz[])
ON CONFLICT DO NOTHING RETURNING key
"""
TOUCH_RULE = "UPDATE analytics.alert_rules SET last_fired_time = $3 WHERE organization_id = $1 AND id = $2"
MARK_DELIVERED = """
UPDATE analytics.alert_firings f SET delivered_time = $2
FROM unnest($1::uuid[]) AS d(id) WHERE f.id = d.id AND f.delivered_time IS NULL
"""
UNDELIVERED = f"""
SELECT f.id::text, f.key, f.trigger_time, f.window_start, f.qr_code_id, f.short_code, f.count, f.fired_time,
       {", ".join("r." + column for column in _COLUMNS.split(", "))}
FROM analytics.alert_firings f
JOIN analytics.alert_rules r ON r.organization_id = f.organization_id AND r.id = f.rule_id
WHERE f.delivered_time IS NULL AND f.fired_time < $1
ORDER BY f.fired_time LIMIT 1000
"""  # noqa: S608


def rule_of(record: Sequence[Any]) -> Rule:
    """A Rule from the columns of `_COLUMNS`, in order."""
    return Rule(
        organization_id=record[0],
        id=record[1],
        display_name=record[2],
        qr_code_id=record[3],
        kind=Kind(record[4]),
        more_than=record[5],
        window_minutes=record[6],
        recipients=tuple(record[7]),
        enabled=record[8],
        create_time=record[9],
    )


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule that fired."""

    id: str
    rule: Rule
    key: str
    trigger_time: datetime
    """The scan that fired it."""
    window_start: datetime
    qr_code_id: str
    short_code: str
    count: int
    fired_time: datetime


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class AlertEvaluator:
    """Evaluates the rules of the organizations a batch touched and delivers their firings."""

    def __init__(
        self,
        engine: AsyncEngine,
        client: redis.Redis,
        *,
        events_stream: str,
        mail_stream: str,
        public_base_url: str,
    ) -> None:
        self.engine = engine
        self.redis = client
        self.events_stream = events_stream
        self.mail_stream = mail_stream
        self.public_base_url = public_base_url.rstrip("/")
        self._rules: dict[str, tuple[float, tuple[Rule, ...]]] = {}
        self._version: Any = None
        self._redeliverer: asyncio.Task[None] | None = None
        self.fired = 0
        """Firings this process recorded."""

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Send firings left undelivered, now and then, in the background."""
        self._redeliverer = asyncio.create_task(self._redeliver_loop(), name="analytics-alert-redelivery")

    async def close(self) -> None:
        await tasks.stop(self._redeliverer)
        self._redeliverer = None

    async def _redeliver_loop(self) -> None:
        while True:
            try:
                await self.redeliver()
            except Exception as exc:  # noqa: BLE001 - try again next round
                log.warning("redelivering alert firings failed", extra={"error": repr(exc)})
            await asyncio.sleep(REDELIVER_EVERY)

    # -- rules -------------------------------------------------------------------------------------

    async def rules_for(self, organizations: set[str]) -> dict[str, tuple[Rule, ...]]:
        """The enabled rules of the organizations that have some."""
        version = await self.redis.get(VERSION_KEY)
        if version != self._version:
            self._rules.clear()
            self._version = version
        now = clock.monotonic()
        cache = self._rules
        stale = sorted(org for org in organizations if now - cache.get(org, (-1e18, ()))[0] >= RULES_TTL)
        if stale:
            found: dict[str, list[Rule]] = {org: [] for org in stale}
            async with self.engine.connect() as connection:
                raw = await connection.get_raw_connection()
                pg: Any = raw.driver_connection
                for record in await pg.fetch(RULES_OF, stale):
                    found[record[0]].append(rule_of(record))
            for org, rules in found.items():
                cache[org] = (now, tuple(sorted(rules, key=lambda rule: rule.id)))
            if len(cache) > 200_000:
                self._rules = {org: entry for org, entry in cache.items() if now - entry[0] < RULES_TTL}
        return {org: cache[org][1] for org in organizations if org in cache and cache[org][1]}

    def forget(self) -> None:
        """Drop the cached rules (tests; a change announced through VERSION_KEY does the same)."""
        self._rules.clear()

    # -- evaluation --------------------------------------------------------------------------------

    async def evaluate(self, rows: Sequence[Prepared]) -> list[Firing]:
        """Evaluate the rules touched by these scans (new or replayed) and deliver what fires."""
        by_org: dict[str, list[Prepared]] = {}
        for row in rows:
            if row.counted and not row.row[17]:
                by_org.setdefault(row.organization_id, []).append(row)
        if not by_org:
            return []
        rules = await self.rules_for(set(by_org))
        if not rules:
            return []
        firings: list[Firing] = []
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            for org in sorted(rules):
                for rule in rules[org]:
                    scans = [row for row in by_org[org] if rule.covers(row.row[3])]
                    if not scans:
                        continue
                    try:
                        async with pg.transaction():
                            await pg.execute(LOCK, rule.organization_id, rule.id)
                            if rule.kind is Kind.THRESHOLD:
                                chosen = await self._threshold(pg, rule, scans)
                            else:
                                chosen = await self._first_scans(pg, rule, scans)
                            firings.extend(await self._record(pg, rule, chosen))
                    except asyncpg.ForeignKeyViolationError:
                        continue  # the rule was deleted since it was cached
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # one rule's failure must not skip the batch's other rules
                        RULE_FAILURES.inc()
                        log.exception(
                            "evaluating an alert rule failed",
                            extra={"organization": rule.organization_id, "rule": rule.id},
                        )
        if firings:
            self.fired += len(firings)
            await self.deliver(firings)
        return firings

    async def _threshold(self, pg: Any, rule: Rule, scans: Sequence[Prepared]) -> list[Firing]:
        window = rule.window
        low = min(row.row[1] for row in scans)
        high = max(row.row[1] for row in scans)
        precheck = SCANS_OF_CODE if rule.qr_code_id else SCANS_OF_ORGANIZATION
        found = await pg.fetchval(
            precheck, rule.organization_id, rule.qr_code_id, low - window, high + window, rule.more_than + 1
        )
        if found <= rule.more_than:
            return []
        statement = CROSSINGS_OF_CODE if rule.qr_code_id else CROSSINGS_OF_ORGANIZATION
        records = await pg.fetch(
            statement,
            rule.organization_id,
            rule.qr_code_id,
            rule.window_minutes,
            low - window,
            high + window,
            low,
            rule.more_than,
        )
        if not records:
            return []
        crossings = [Crossing(record[0], int(record[1]), record[2], record[3]) for record in records]
        fired = [
            record[0]
            for record in await pg.fetch(FIRED_NEAR, rule.organization_id, rule.id, low - window, high + 2 * window)
        ]
        now = datetime.now(UTC)
        return [
            Firing(
                id=uuid7(),
                rule=rule,
                key=threshold_key(crossing.time),
                trigger_time=crossing.time,
                window_start=crossing.time - window,
                qr_code_id=crossing.qr_code_id,
                short_code=crossing.short_code,
                count=crossing.count,
                fired_time=now,
            )
            for crossing in select_firings(crossings, fired, window, not_before=rule.create_time)
        ]

    async def _first_scans(self, pg: Any, rule: Rule, scans: Sequence[Prepared]) -> list[Firing]:
        earliest: dict[str, Prepared] = {}
        for row in scans:
            code = row.row[3]
            if code not in earliest or row.key < earliest[code].key:
                earliest[code] = row
        candidates = [row for row in earliest.values() if row.row[1] >= rule.create_time]
        if not candidates:
            return []
        records = await pg.fetch(
            FIRSTS,
            rule.organization_id,
            [row.row[3] for row in candidates],
            [row.row[1] for row in candidates],
            [row.event_id for row in candidates],
        )
        firsts = {record[0] for record in records}
        now = datetime.now(UTC)
        return [
            Firing(
                id=uuid7(),
                rule=rule,
                key=row.row[3],
                trigger_time=row.row[1],
                window_start=row.row[1],
                qr_code_id=row.row[3],
                short_code=row.row[4],
                count=1,
                fired_time=now,
            )
            for row in candidates
            if row.row[3] in firsts
        ]

    async def _record(self, pg: Any, rule: Rule, chosen: Sequence[Firing]) -> list[Firing]:
        """Insert the firings (in the rule's locked transaction); those that were new."""
        if not chosen:
            return []
        keys = await pg.fetch(
            INSERT_FIRINGS,
            rule.organization_id,
            rule.id,
            [firing.key for firing in chosen],
            [firing.id for firing in chosen],
            [firing.trigger_time for firing in chosen],
            [firing.window_start for firing in chosen],
            [firing.qr_code_id for firing in chosen],
            [firing.short_code for firing in chosen],
            [firing.count for firing in chosen],
            [firing.fired_time for firing in chosen],
        )
        new = {record[0] for record in keys}
        recorded = [firing for firing in chosen if firing.key in new]
        if recorded:
            await pg.execute(TOUCH_RULE, rule.organization_id, rule.id, max(f.fired_time for f in recorded))
        return recorded

    # -- delivery ----------------------------------------------------------------------------------

    def messages(self, firing: Firing) -> tuple[event_pb2.Event, list[event_pb2.Mail]]:
        """The event and the mails of a firing (ids derived from the firing's: resending is harmless)."""
        rule = firing.rule
        organization = f"organizations/{rule.organization_id}"
        code = f"{organization}/qrCodes/{firing.qr_code_id}"
        condition: dict[str, Any] = (
            {"threshold": {"moreThan": rule.more_than, "windowMinutes": rule.window_minutes}}
            if rule.kind is Kind.THRESHOLD
            else {"firstScan": {}}
        )
        data = {
            "alertRule": rule.name,
            "displayName": rule.display_name,
            "scope": f"{organization}/qrCodes/{rule.qr_code_id}" if rule.qr_code_id else organization,
            "condition": condition,
            "qrCode": code,
            "shortCode": firing.short_code,
            "count": firing.count,
            "windowStartTime": _iso(firing.window_start),
            "windowEndTime": _iso(firing.trigger_time),
        }
        event = events.new_event(EVENT_TYPE, organization, rule.name, data, id=firing.id, time=firing.fired_time)
        query = urlencode(
            {
                "qrCodes": code,
                "startTime": _iso(firing.window_start),
                "endTime": _iso(firing.trigger_time + timedelta(seconds=1)),
            }
        )
        link = f"{self.public_base_url}/v1/{organization}/analytics:summary?{query}"
        threshold = rule.kind is Kind.THRESHOLD
        variables = {
            "alert_name": rule.display_name,
            "organization": organization,
            "qr_code": code,
            "code": firing.short_code or firing.qr_code_id,
            "count": str(firing.count),
            "window_minutes": str(rule.window_minutes) if threshold else "",
            "window": window_words(rule.window_minutes) if threshold else "",
            "condition": "threshold" if threshold else "first_scan",
            "link": link,
        }
        mails = [
            events.new_mail(
                recipient,
                MAIL_TEMPLATE,
                variables,
                organization=organization,
                id=str(uuid.uuid5(_MAIL_NAMESPACE, f"{firing.id}/{recipient.lower()}")),
                time=firing.fired_time,
            )
            for recipient in rule.recipients
        ]
        return event, mails

    async def deliver(self, firings: Sequence[Firing]) -> None:
        """Append the firings' events and mails, then mark them delivered."""
        built = [self.messages(firing) for firing in firings]
        await events.append(self.redis, self.events_stream, [event for event, _ in built])
        mails = [mail for _, batch in built for mail in batch]
        if mails:
            await events.append(self.redis, self.mail_stream, mails)
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            await pg.execute(MARK_DELIVERED, [firing.id for firing in firings], datetime.now(UTC))
        for firing in firings:
            log.info(
                "alert fired",
                extra={"alert_rule": firing.rule.name, "count": firing.count, "trigger": _iso(firing.trigger_time)},
            )

    async def redeliver(self, *, older_than: timedelta = REDELIVER_AFTER) -> int:
        """Send again the firings recorded more than `older_than` ago and still undelivered; how many."""
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            pg: Any = raw.driver_connection
            records = await pg.fetch(UNDELIVERED, datetime.now(UTC) - older_than)
        firings = [
            Firing(
                id=record[0],
                rule=rule_of(record[8:]),
                key=record[1],
                trigger_time=record[2],
                window_start=record[3],
                qr_code_id=record[4],
                short_code=record[5],
                count=record[6],
                fired_time=record[7],
            )
            for record in records
        ]
        if firings:
            await self.deliver(firings)
        return len(firings)
