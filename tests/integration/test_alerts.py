"""Scan alerts against the real analytics service, Redis and PostgreSQL: rules through AlertService, scans
through the session's private scans stream, firings read from the service's private events and mail streams."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.analytics.alerts import EVENT_TYPE, AlertEvaluator
from qrmesh.analytics.domain.alerts import MAX_RULES
from qrmesh.analytics.enrich import Enricher
from qrmesh.analytics.v1 import alerts_pb2, alerts_pb2_grpc
from qrmesh.events.v1 import event_pb2
from qrmesh.platform.database import create_engine
from qrmesh.platform.events import event_data
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.scans.v1 import scan_event_pb2
from tests.integration.identity_helpers import Account, sign_up

Event = scan_event_pb2.ScanEvent
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


@pytest.fixture(scope="module")
async def engine(analytics_server: Server, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url, schema="analytics")
    yield engine
    await engine.dispose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def alerts(analytics_server: Server) -> AsyncIterator[alerts_pb2_grpc.AlertServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analytics_server.port}") as channel:
        yield alerts_pb2_grpc.AlertServiceStub(channel)


@pytest.fixture
async def account(identity_server: Server) -> Account:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        return await sign_up(channel, "alerter")


def org_id(account: Account) -> str:
    return account.organization.removeprefix("organizations/")


def scan(organization: str, code: str, when: datetime, *, bot: bool = False, outcome: int = Event.REDIRECTED) -> Event:
    stamp = Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return Event(
        event_id=str(uuid.uuid4()),
        time=stamp,
        short_code=f"s-{code}",
        qr_code=f"organizations/{organization}/qrCodes/{code}",
        organization=f"organizations/{organization}",
        outcome=outcome,  # type: ignore[arg-type]
        destination_url="https://example.com/",
        user_agent=IPHONE,
        country="SE",
        ip_address="81.224.0.0",
        visitor_id=uuid.uuid4().hex,
        bot=bot,
        method="GET",
    )


async def send(client: redis.Redis, stream: str, events: Sequence[Event]) -> None:
    """XADD the events in one MULTI (one batch for the consumer) and wait until the group acknowledged them:
    alert evaluation and delivery happen before the acknowledgement."""
    async with client.pipeline(transaction=True) as pipe:
        for item in events:
            pipe.xadd(stream, {"event": item.SerializeToString()})
        await pipe.execute()
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        groups: Any = await client.xinfo_groups(stream)
        info = next((g for g in groups if g["name"] in ("analytics", b"analytics")), None)
        if info is not None and info["lag"] == 0 and info["pending"] == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stream {stream} not drained: {info}")
        await asyncio.sleep(0.05)


async def entries(client: redis.Redis, stream: str, field: bytes) -> list[bytes]:
    """The payloads of a stream's entries, oldest first."""
    answer: Any = await client.xrange(stream)
    return [bytes(fields[field]) for _, fields in answer]


async def fired(client: redis.Redis, settings: Settings, organization: str) -> list[event_pb2.Event]:
    """The events of the organization on the service's private events stream."""
    found = []
    for payload in await entries(client, settings.events_stream, b"event"):
        message = event_pb2.Event.FromString(payload)
        if message.organization == f"organizations/{organization}":
            found.append(message)
    return found


async def mailed(client: redis.Redis, settings: Settings, organization: str) -> list[event_pb2.Mail]:
    found = []
    for payload in await entries(client, settings.mail_stream, b"mail"):
        message = event_pb2.Mail.FromString(payload)
        if message.organization == f"organizations/{organization}":
            found.append(message)
    return found


def threshold_rule(
    more_than: int, minutes: int, *, code: str = "", recipients: Sequence[str] = ()
) -> alerts_pb2.AlertRule:
    return alerts_pb2.AlertRule(
        display_name="Busy poster",
        qr_code=code,
        threshold=alerts_pb2.ThresholdCondition(more_than=more_than, window_minutes=minutes),
        email_recipients=list(recipients),
        enabled=True,
    )


async def create(
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub, account: Account, rule: alerts_pb2.AlertRule, request_id: str = ""
) -> alerts_pb2.AlertRule:
    return await alerts.CreateAlertRule(
        alerts_pb2.CreateAlertRuleRequest(parent=account.organization, alert_rule=rule, request_id=request_id),
        metadata=account.metadata(),
    )


async def test_more_than_three_in_ten_minutes_fires_at_the_fourth_scan_once(
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub,
    account: Account,
    analytics_settings: Settings,
    analytics_stream: str,
    client: redis.Redis,
) -> None:
    org = org_id(account)
    code = f"{account.organization}/qrCodes/poster"
    rule = await create(
        alerts, account, threshold_rule(3, 10, code=code, recipients=["ada@example.com", "bob@example.org"])
    )
    assert rule.name.startswith(f"{account.organization}/alertRules/")
    assert rule.threshold.more_than == 3
    assert rule.qr_code == code
    assert not rule.HasField("last_fired_time")
    start = datetime.now(UTC) + timedelta(seconds=1)
    first_three = [scan(org, "poster", start + timedelta(minutes=minute)) for minute in (0, 1, 2)]
    noise = [
        scan(org, "poster", start + timedelta(minutes=2), bot=True),  # bots do not count
        scan(org, "poster", start + timedelta(minutes=2), outcome=Event.PAUSED),  # neither do pages
        scan(org, "other", start + timedelta(minutes=2)),  # another code is out of scope
    ]
    await send(client, analytics_stream, [*first_three, *noise])
    assert await fired(client, analytics_settings, org) == []

    fourth = scan(org, "poster", start + timedelta(minutes=3))
    await send(client, analytics_stream, [fourth])
    events = await fired(client, analytics_settings, org)
    assert len(events) == 1
    event = events[0]
    assert event.type == EVENT_TYPE
    assert event.subject == rule.name
    data = event_data(event)
    assert data["alertRule"] == rule.name
    assert data["displayName"] == "Busy poster"
    assert data["scope"] == code
    assert data["qrCode"] == code
    assert data["condition"] == {"threshold": {"moreThan": 3.0, "windowMinutes": 10.0}}
    assert data["count"] == 4
    end = start + timedelta(minutes=3)
    assert data["windowEndTime"] == end.isoformat().replace("+00:00", "Z")
    assert data["windowStartTime"] == (end - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    mails = await mailed(client, analytics_settings, org)
    assert sorted(mail.to for mail in mails) == ["ada@example.com", "bob@example.org"]
    for mail in mails:
        assert mail.template == "scan_alert"
        assert mail.variables["alert_name"] == "Busy poster"
        assert mail.variables["count"] == "4"
        assert mail.variables["window_minutes"] == "10"
        assert mail.variables["qr_code"] == code
        assert mail.variables["link"].startswith(f"{analytics_settings.public_base_url}/v1/{account.organization}/")
    stored = await alerts.GetAlertRule(alerts_pb2.GetAlertRuleRequest(name=rule.name), metadata=account.metadata())
    assert stored.HasField("last_fired_time")

    # The same batch again (a redelivery): the rows are duplicates, evaluation runs again, nothing fires twice.
    await send(client, analytics_stream, [*first_three, fourth])
    # A fifth scan within the window of the firing: still one firing per window.
    await send(client, analytics_stream, [scan(org, "poster", start + timedelta(minutes=4))])
    assert len(await fired(client, analytics_settings, org)) == 1
    assert len(await mailed(client, analytics_settings, org)) == 2

    # Ten minutes after the firing the rule is armed again: the window [t - 10 min, t] holds 4 scans again.
    later = start + timedelta(minutes=13)
    await send(client, analytics_stream, [scan(org, "poster", later + timedelta(seconds=s)) for s in (0, 1, 2)])
    events = await fired(client, analytics_settings, org)
    assert len(events) == 2
    assert event_data(events[1])["count"] == 4  # minutes 4 (kept out of the first firing's window), 13 x 3


async def test_the_window_slides_and_its_ends_are_included(
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub,
    account: Account,
    analytics_settings: Settings,
    analytics_stream: str,
    client: redis.Redis,
) -> None:
    org = org_id(account)
    await create(alerts, account, threshold_rule(2, 10))  # the whole organization: more than 2 in 10 minutes
    edge = await create(alerts, account, threshold_rule(1, 10, code=f"{account.organization}/qrCodes/edge"))
    base = datetime.now(UTC) + timedelta(minutes=1)

    def at(code: str, minutes: float) -> Event:
        return scan(org, code, base + timedelta(minutes=minutes))

    # Spread beyond the window: no 10 minutes hold 3 scans ([10, 20] holds 12 and 20).
    await send(client, analytics_stream, [at("c0", 0), at("c1", 12), at("c2", 20)])
    assert await fired(client, analytics_settings, org) == []
    # A late scan at 15 completes the window of the scan stored at 20: [10, 20] holds 12, 15 and 20.
    await send(client, analytics_stream, [at("c3", 15)])
    events = await fired(client, analytics_settings, org)
    assert len(events) == 1
    data = event_data(events[0])
    assert data["windowEndTime"] == (base + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    assert data["count"] == 3
    assert data["scope"] == account.organization
    assert data["qrCode"] == f"{account.organization}/qrCodes/c2"

    # Both ends are included: scans exactly 10 minutes apart are 2 in [100, 110]...
    await send(client, analytics_stream, [at("edge", 100), at("edge", 110)])
    events = await fired(client, analytics_settings, org)
    assert len(events) == 2
    assert events[1].subject == edge.name
    assert event_data(events[1])["count"] == 2
    # ...and 10 minutes and one second apart they are not.
    await send(client, analytics_stream, [at("edge", 200), at("edge", 210 + 1 / 60)])
    assert len(await fired(client, analytics_settings, org)) == 2


async def test_a_first_scan_rule_fires_once_per_code_never_for_codes_scanned_before(
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub,
    account: Account,
    analytics_settings: Settings,
    analytics_stream: str,
    client: redis.Redis,
) -> None:
    org = org_id(account)
    await send(client, analytics_stream, [scan(org, "old", datetime.now(UTC) - timedelta(minutes=5))])
    rule = await create(
        alerts,
        account,
        alerts_pb2.AlertRule(
            display_name="Went live",
            first_scan=alerts_pb2.FirstScanCondition(),
            email_recipients=["ops@example.com"],
            enabled=True,
        ),
    )
    now = datetime.now(UTC) + timedelta(seconds=1)
    await send(
        client,
        analytics_stream,
        [
            scan(org, "old", now),
            scan(org, "new", now + timedelta(seconds=2)),
            scan(org, "new", now + timedelta(seconds=1)),
            scan(org, "bots-only", now, bot=True),
        ],
    )
    await send(client, analytics_stream, [scan(org, "new", now + timedelta(seconds=3)), scan(org, "newer", now)])
    events = await fired(client, analytics_settings, org)
    assert sorted(event_data(event)["qrCode"] for event in events) == [
        f"{account.organization}/qrCodes/new",
        f"{account.organization}/qrCodes/newer",
    ]
    first = next(event_data(e) for e in events if e.subject == rule.name and event_data(e)["qrCode"].endswith("/new"))
    assert first["condition"] == {"firstScan": {}}
    assert first["count"] == 1
    assert first["windowEndTime"] == (now + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    assert len(await mailed(client, analytics_settings, org)) == 2


async def test_disabled_and_deleted_rules_do_not_fire(
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub,
    account: Account,
    analytics_settings: Settings,
    analytics_stream: str,
    client: redis.Redis,
) -> None:
    org = org_id(account)
    metadata = account.metadata()
    rule = await create(alerts, account, threshold_rule(0, 5))
    update = alerts_pb2.UpdateAlertRuleRequest(
        alert_rule=alerts_pb2.AlertRule(name=rule.name, enabled=False),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
    )
    changed = await alerts.UpdateAlertRule(update, metadata=metadata)
    assert not changed.enabled
    assert changed.display_name == rule.display_name
    assert changed.threshold.window_minutes == 5
    await send(client, analytics_stream, [scan(org, "a", datetime.now(UTC) + timedelta(seconds=1))])
    assert await fired(client, analytics_settings, org) == []

    update.alert_rule.enabled = True
    await alerts.UpdateAlertRule(update, metadata=metadata)
    await send(client, analytics_stream, [scan(org, "a", datetime.now(UTC) + timedelta(minutes=6))])
    assert len(await fired(client, analytics_settings, org)) == 1

    await alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(name=rule.name), metadata=metadata)
    await send(client, analytics_stream, [scan(org, "a", datetime.now(UTC) + timedelta(minutes=20))])
    assert len(await fired(client, analytics_settings, org)) == 1
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await alerts.GetAlertRule(alerts_pb2.GetAlertRuleRequest(name=rule.name), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rules_are_validated_limited_listed_and_idempotent(
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub, account: Account
) -> None:
    metadata = account.metadata()

    async def refused(rule: alerts_pb2.AlertRule) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await create(alerts, account, rule)
        return error.value

    bad_mail = await refused(threshold_rule(3, 10, recipients=["not an address"]))
    assert bad_mail.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "emailRecipients[0]" in (bad_mail.details() or "")
    foreign = await refused(threshold_rule(3, 10, code="organizations/someone-else/qrCodes/x"))
    assert foreign.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "qrCode" in (foreign.details() or "")
    no_condition = await refused(alerts_pb2.AlertRule(display_name="x", enabled=True))
    assert no_condition.code() == grpc.StatusCode.INVALID_ARGUMENT
    no_window = await refused(threshold_rule(3, 0))
    assert no_window.code() == grpc.StatusCode.INVALID_ARGUMENT
    too_many = await refused(threshold_rule(3, 10, recipients=[f"p{i}@example.com" for i in range(11)]))
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT

    first = await create(alerts, account, threshold_rule(1, 1), request_id="retry-1")
    again = await create(alerts, account, threshold_rule(1, 1), request_id="retry-1")
    assert again.name == first.name
    for _ in range(MAX_RULES - 1):
        await create(alerts, account, threshold_rule(1, 1))
    over = await refused(threshold_rule(1, 1))
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "20" in (over.details() or "")

    names: list[str] = []
    token = ""
    while True:
        page = await alerts.ListAlertRules(
            alerts_pb2.ListAlertRulesRequest(parent=account.organization, page_size=7, page_token=token),
            metadata=metadata,
        )
        names.extend(rule.name for rule in page.alert_rules)
        token = page.next_page_token
        if not token:
            break
    assert len(names) == MAX_RULES == len(set(names))
    assert names[0] == first.name

    def change(paths: list[str], **fields: Any) -> alerts_pb2.UpdateAlertRuleRequest:
        return alerts_pb2.UpdateAlertRuleRequest(
            alert_rule=alerts_pb2.AlertRule(name=first.name, **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await alerts.UpdateAlertRule(change(["threshold"]), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await alerts.UpdateAlertRule(change(["create_time"]), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    switched = await alerts.UpdateAlertRule(
        change(["threshold", "first_scan", "email_recipients"], first_scan={}, email_recipients=["Zoe@Example.com"]),
        metadata=metadata,
    )
    assert switched.WhichOneof("condition") == "first_scan"
    assert list(switched.email_recipients) == ["Zoe@Example.com"]
    assert switched.display_name == first.display_name


async def test_evaluating_the_same_scans_again_fires_nothing_and_undelivered_firings_are_sent_again(
    alerts: alerts_pb2_grpc.AlertServiceAsyncStub,
    account: Account,
    analytics_settings: Settings,
    analytics_stream: str,
    client: redis.Redis,
    engine: AsyncEngine,
) -> None:
    org = org_id(account)
    await create(alerts, account, threshold_rule(1, 10, recipients=["ada@example.com"]))
    base = datetime.now(UTC) + timedelta(seconds=1)
    batch = [scan(org, "x", base), scan(org, "x", base + timedelta(seconds=1))]
    await send(client, analytics_stream, batch)
    assert len(await fired(client, analytics_settings, org)) == 1

    # An evaluator of its own, as another consumer (or this one after a crash) would run it on the same rows.
    suffix = secrets.token_hex(4)
    evaluator = AlertEvaluator(
        engine, client, events_stream=f"test-events-{suffix}", mail_stream=f"test-mail-{suffix}", public_base_url=""
    )
    enricher = Enricher()
    rows = [row for row in (enricher.prepare(f"0-{i}", e) for i, e in enumerate(batch)) if row is not None]
    assert await evaluator.evaluate(rows) == []

    # A firing recorded but not delivered (a crash between its transaction and the appends) is sent again.
    async with engine.begin() as connection:
        raw = await connection.get_raw_connection()
        pg: Any = raw.driver_connection
        await pg.execute("UPDATE analytics.alert_firings SET delivered_time = NULL WHERE organization_id = $1", org)
    try:
        assert await evaluator.redeliver(older_than=timedelta(0)) >= 1
        resent = [event_pb2.Event.FromString(p) for p in await entries(client, f"test-events-{suffix}", b"event")]
        original = (await fired(client, analytics_settings, org))[0]
        assert original.id in {event.id for event in resent}  # the same id: subscribers see it once
        assert await evaluator.redeliver(older_than=timedelta(0)) == 0
    finally:
        await client.delete(f"test-events-{suffix}", f"test-mail-{suffix}")
