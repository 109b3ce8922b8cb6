"""Stored QR codes over real gRPC against real PostgreSQL and Redis: resources, lists, updates,
short codes, rendering, links in Redis, the redirect's LinkService, scan settings, access."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as redis
from argon2 import PasswordHasher
from google.protobuf import timestamp_pb2
from sqlalchemy import text
from sqlalchemy.engine import make_url

from qrmesh.auth.v1 import policy_pb2
from qrmesh.billing.client import FixedPlans
from qrmesh.billing.domain.entitlements import DYNAMIC_CODES, EntitlementSet, Grant
from qrmesh.platform.database import create_engine, migrate
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.qr import links
from qrmesh.qr import server as qr_server_module
from qrmesh.qr.domain import ids
from qrmesh.qr.domain.updates import plan_update
from qrmesh.qr.service import QrCodes
from qrmesh.qr.v1 import design_pb2, stored_qr_code_pb2
from tests.imaging import decode_png
from tests.integration.billing_helpers import subscribe
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import (
    Clients,
    QrCode,
    TcpProxy,
    alias,
    api_key,
    api_key_metadata,
    dynamic,
    member,
    reason,
    service_metadata,
    static,
    svc,
    text_content,
    url_content,
    violations,
)

LinkRules = stored_qr_code_pb2.LinkRules
# For a QrCodes built by hand (no billing service): one dynamic code needs room for one.
UNLIMITED = FixedPlans(EntitlementSet.of("organizations/any", "business", [Grant.quantity(DYNAMIC_CODES, None)]))
Route = stored_qr_code_pb2.Route


@pytest.fixture(scope="module")
async def identity(identity_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
async def owner(identity: grpc.aio.Channel, billing_server: Server) -> Account:
    """An owner of an organization on Business (more codes than Free's 10, every feature); Free's limits
    have tests of their own (test_billing_enforcement)."""
    account = await sign_up(identity, "qr-owner")
    await subscribe(billing_server, account, "business")
    return account


@pytest.fixture
async def fresh(identity: grpc.aio.Channel, billing_server: Server) -> Account:
    """An owner of a new, empty organization on Business (members and API keys)."""
    account = await sign_up(identity, "qr-fresh")
    await subscribe(billing_server, account, "business")
    return account


@pytest.fixture(scope="module")
def qr(qr_channel: grpc.aio.Channel) -> Clients:
    return Clients.on(qr_channel)


@pytest.fixture(scope="module")
async def redis_client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    """The error an awaited call fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# ---------------------------------------------------------------- create and get


async def test_static_code_is_stored_as_given(qr: Clients, owner: Account) -> None:
    created = await qr.create(
        owner, static("Hello, world", display_name="  Greeting  ", folder="campaigns/2026", tags=["Print", "summer"])
    )
    assert re.fullmatch(re.escape(owner.organization) + r"/qrCodes/[a-z2-7]{16}", created.name)
    assert created.display_name == "Greeting"
    assert created.kind == QrCode.STATIC
    assert created.content.text.text == "Hello, world"
    assert (created.folder, list(created.tags)) == ("campaigns/2026", ["Print", "summer"])
    assert created.status == QrCode.ACTIVE
    assert (created.short_code, created.short_url, created.scan_count) == ("", "", 0)
    assert not created.HasField("rules")
    assert created.etag
    assert created.HasField("create_time")
    assert created.create_time == created.update_time
    assert await qr.get(owner, created.name) == created


async def test_dynamic_code_gets_a_random_short_code(qr: Clients, owner: Account, settings: Settings) -> None:
    created = await qr.create(owner, dynamic("https://example.com/spring"))
    assert re.fullmatch(r"[0-9A-Za-z]{7}", created.short_code)
    assert created.short_url == f"{settings.public_base_url}/r/{created.short_code}"
    assert created.redirect_type == QrCode.FOUND
    assert created.content.url.url == "https://example.com/spring"
    assert created.rules.password_protected is False


async def test_missing_code_is_not_found(qr: Clients, owner: Account) -> None:
    error = await rpc_error(qr.get(owner, f"{owner.organization}/qrCodes/aaaaaaaaaaaaaaaa"))
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "QR_CODE_NOT_FOUND")
    error = await rpc_error(qr.get(owner, f"{owner.organization}/qrCodes/nope"))
    assert (error.code(), reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")


@pytest.mark.parametrize(
    ("code", "expected_reason", "field"),
    [
        (QrCode(kind=QrCode.DYNAMIC, content=text_content("hi")), "DYNAMIC_NEEDS_URL", "qrCode.content.url"),
        (static(short_code="my-code"), "DYNAMIC_ONLY", "qrCode.shortCode"),
        (static(rules=LinkRules(max_scans=3)), "DYNAMIC_ONLY", "qrCode.rules"),
        (QrCode(kind=QrCode.STATIC), "CONTENT_REQUIRED", "qrCode.content"),
        (static(design=design_pb2.Design(foreground="no-color")), "INVALID_COLOR", "qrCode.design.foreground"),
        (static("x" * 2900, design=design_pb2.Design(error_correction=design_pb2.Design.H)), "CONTENT_TOO_LONG", ""),
        (static(tags=["a", "A"]), "DUPLICATE_TAG", "qrCode.tags[1]"),
        (static(tags=["x" * 51]), "INVALID_TAG", "qrCode.tags[0]"),
        (static(tags=[" "]), "INVALID_TAG", "qrCode.tags[0]"),
        (static(tags=[f"t{i}" for i in range(21)]), "INVALID_ARGUMENT", "qrCode.tags"),
        (dynamic(short_code="Admin"), "SHORT_CODE_RESERVED", "qrCode.shortCode"),
        (dynamic(short_code="healthz"), "SHORT_CODE_RESERVED", "qrCode.shortCode"),
        (dynamic(short_code="a b"), "INVALID_ARGUMENT", "qrCode.shortCode"),
    ],
)
async def test_bad_codes_are_refused(
    qr: Clients, owner: Account, code: QrCode, expected_reason: str, field: str
) -> None:
    error = await rpc_error(qr.create(owner, code))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert reason(error) == expected_reason, error.details()
    if field:
        assert field in violations(error)


async def test_rules_are_checked_and_normalized(qr: Clients, owner: Account) -> None:
    later, earlier = timestamp_pb2.Timestamp(seconds=2_000_000_000), timestamp_pb2.Timestamp(seconds=1_900_000_000)
    error = await rpc_error(qr.create(owner, dynamic(rules=LinkRules(not_before=later, not_after=earlier))))
    assert (reason(error), violations(error)) == ("INVALID_TIME_RANGE", ["qrCode.rules.notAfter"])
    both = Route(url="https://a.example", split=[Route.Variant(url="https://b.example")] * 2)
    error = await rpc_error(qr.create(owner, dynamic(rules=LinkRules(routes=[both]))))
    assert (reason(error), violations(error)) == ("INVALID_ROUTE", ["qrCode.rules.routes[0]"])
    zone = stored_qr_code_pb2.Schedule(time_zone="Mars/Olympus", windows=[stored_qr_code_pb2.Schedule.Window()])
    error = await rpc_error(qr.create(owner, dynamic(rules=LinkRules(schedule=zone))))
    assert reason(error) == "INVALID_TIME_ZONE"
    assert "qrCode.rules.schedule.windows[0].startTime" in violations(error)
    error = await rpc_error(qr.create(owner, dynamic(rules=LinkRules(password="abc"))))
    assert (reason(error), violations(error)) == ("INVALID_PASSWORD", ["qrCode.rules.password"])

    when = stored_qr_code_pb2.RouteCondition(countries=["se", "SE", "no"], languages=["pt-BR", "EN"])
    route = Route(when=when, url="https://nordic.example")
    created = await qr.create(owner, dynamic(rules=LinkRules(routes=[route], max_scans=7)))
    stored = created.rules.routes[0]
    assert (list(stored.when.countries), list(stored.when.languages)) == (["SE", "NO"], ["pt-br", "en"])
    assert stored.name == "route-1"
    assert created.rules.max_scans == 7


# ---------------------------------------------------------------- idempotency and aliases


async def test_request_id_answers_the_first_result(qr: Clients, owner: Account, fresh: Account) -> None:
    first = await qr.create(owner, static("once"), request_id="req-1")
    again = await qr.create(owner, static("a different body"), request_id="req-1")
    assert again == first
    raced = await asyncio.gather(*(qr.create(owner, dynamic(), request_id="req-race") for _ in range(5)))
    assert len({code.name for code in raced}) == 1
    other = await qr.create(fresh, static("once"), request_id="req-1")
    assert other.name != first.name


async def test_custom_alias_is_case_sensitive_and_unique(qr: Clients, owner: Account, fresh: Account) -> None:
    chosen = alias("Promo")
    created = await qr.create(owner, dynamic(short_code=chosen))
    assert created.short_code == chosen
    error = await rpc_error(qr.create(fresh, dynamic(short_code=chosen)))
    assert (error.code(), reason(error)) == (grpc.StatusCode.ALREADY_EXISTS, "SHORT_CODE_TAKEN")
    lower = await qr.create(owner, dynamic(short_code=chosen.lower()))
    assert lower.short_code == chosen.lower() != chosen


async def test_deleted_code_retires_its_short_code(qr: Clients, owner: Account, redis_client: redis.Redis) -> None:
    chosen = alias("gone")
    created = await qr.create(owner, dynamic(short_code=chosen))
    error = await rpc_error(qr.delete(owner, created.name, etag="stale"))
    assert (error.code(), reason(error)) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await qr.delete(owner, created.name, etag=created.etag)
    error = await rpc_error(qr.get(owner, created.name))
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "QR_CODE_NOT_FOUND")
    error = await rpc_error(qr.delete(owner, created.name))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(qr.create(owner, dynamic(short_code=chosen)))
    assert reason(error) == "SHORT_CODE_TAKEN"
    stored = await links.get(redis_client, chosen)
    assert stored is not None
    assert stored.link is None
    assert stored.version == 2
    error = await rpc_error(
        qr.links.ResolveLink(svc.ResolveLinkRequest(short_code=chosen), metadata=service_metadata())
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "SHORT_CODE_NOT_FOUND")


# ---------------------------------------------------------------- lists


async def test_list_filters(qr: Clients, fresh: Account) -> None:
    made = {
        "root": await qr.create(fresh, static("1", display_name="Root flyer", tags=["Print"])),
        "campaign": await qr.create(fresh, static("2", display_name="Save 50% now", folder="campaigns")),
        "nested": await qr.create(fresh, dynamic(display_name="Save 500 now", folder="campaigns/2026", tags=["print"])),
        "sibling": await qr.create(fresh, static("4", display_name="Under_score", folder="campaignsX")),
        "archived": await qr.create(fresh, static("5", display_name="Old", status=QrCode.ARCHIVED)),
        "paused": await qr.create(
            fresh, dynamic(display_name="Paused", status=QrCode.PAUSED, short_code=alias("FindMe"))
        ),
    }

    async def names(**fields: object) -> set[str]:
        answer = await qr.list(fresh, **fields)
        assert answer.total_size == len(answer.qr_codes)
        return {key for key, code in made.items() if code.name in {item.name for item in answer.qr_codes}}

    assert await names() == {"root", "campaign", "nested", "sibling", "paused"}
    assert await names(status=QrCode.ARCHIVED) == {"archived"}
    assert await names(status=QrCode.PAUSED) == {"paused"}
    assert await names(folder="campaigns") == {"campaign", "nested"}
    assert await names(folder="campaigns/2026/") == {"nested"}
    assert await names(tag="PRINT") == {"root", "nested"}
    assert await names(kind=QrCode.DYNAMIC) == {"nested", "paused"}
    assert await names(search="50%") == {"campaign"}
    assert await names(search="save 50") == {"campaign", "nested"}
    assert await names(search="_") == {"sibling"}
    assert await names(search="findme") == {"paused"}


async def test_list_pages_in_order(qr: Clients, fresh: Account) -> None:
    titles = ["delta", "Alpha", "charlie", "Echo", "bravo"]
    created = [await qr.create(fresh, static(title, display_name=title)) for title in titles]

    async def all_pages(order_by: str, page_size: int = 2) -> list[str]:
        seen: list[str] = []
        token = ""
        while True:
            page = await qr.list(fresh, order_by=order_by, page_size=page_size, page_token=token)
            assert page.total_size == len(titles)
            assert len(page.qr_codes) <= page_size
            seen.extend(code.display_name for code in page.qr_codes)
            token = page.next_page_token
            if not token:
                return seen

    assert await all_pages("display_name") == ["Alpha", "bravo", "charlie", "delta", "Echo"]
    assert await all_pages("display_name desc", 3) == ["Echo", "delta", "charlie", "bravo", "Alpha"]
    assert await all_pages("") == list(reversed(titles))
    assert await all_pages("create_time asc", 4) == titles
    first = await qr.list(fresh, order_by="display_name", page_size=2)
    error = await rpc_error(
        qr.list(fresh, order_by="display_name", page_size=2, page_token=first.next_page_token, tag="x")
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    error = await rpc_error(qr.list(fresh, page_token="garbage"))
    assert reason(error) == "INVALID_PAGE_TOKEN"
    assert created[0].name


# ---------------------------------------------------------------- updates


async def test_update_with_mask_and_etag(qr: Clients, owner: Account) -> None:
    created = await qr.create(owner, static("v1", display_name="Before", tags=["keep"]))
    change = QrCode(name=created.name, display_name="After", content=text_content("ignored"), etag=created.etag)
    updated = await qr.update(owner, change, ["display_name"])
    assert (updated.display_name, updated.content.text.text, list(updated.tags)) == ("After", "v1", ["keep"])
    assert updated.etag != created.etag
    assert updated.update_time.ToDatetime() > created.update_time.ToDatetime()

    error = await rpc_error(qr.update(owner, change, ["display_name"]))  # the etag of before
    assert (error.code(), reason(error)) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    for paths, expected in (
        (["kind"], "IMMUTABLE_FIELD"),
        (["short_code"], "IMMUTABLE_FIELD"),
        (["nonsense"], "INVALID_UPDATE_MASK"),
        (["content.text"], "INVALID_UPDATE_MASK"),
        (["rules.password_protected"], "IMMUTABLE_FIELD"),
    ):
        error = await rpc_error(qr.update(owner, QrCode(name=created.name), paths))
        assert (error.code(), reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, expected), paths
    error = await rpc_error(qr.update(owner, QrCode(name=created.name, kind=QrCode.DYNAMIC), ["display_name"]))
    assert reason(error) == "IMMUTABLE_FIELD"

    # An empty mask replaces every changeable field.
    replaced = await qr.update(owner, QrCode(name=created.name, content=text_content("v2")))
    assert (replaced.display_name, replaced.content.text.text, list(replaced.tags)) == ("", "v2", [])
    assert replaced.kind == QrCode.STATIC
    error = await rpc_error(qr.update(owner, QrCode(name=created.name)))
    assert reason(error) == "CONTENT_REQUIRED"
    error = await rpc_error(qr.update(owner, QrCode(name=created.name, tags=["a", "a"]), ["tags"]))
    assert reason(error) == "DUPLICATE_TAG"


async def test_dynamic_update_keeps_the_url_rule(qr: Clients, owner: Account) -> None:
    created = await qr.create(owner, dynamic())
    error = await rpc_error(qr.update(owner, QrCode(name=created.name, content=text_content("x")), ["content"]))
    assert reason(error) == "DYNAMIC_NEEDS_URL"
    redirect = QrCode(name=created.name, redirect_type=QrCode.TEMPORARY_REDIRECT)
    assert (await qr.update(owner, redirect, ["redirect_type"])).redirect_type == QrCode.TEMPORARY_REDIRECT
    static_code = await qr.create(owner, static())
    error = await rpc_error(
        qr.update(owner, QrCode(name=static_code.name, redirect_type=QrCode.FOUND), ["redirect_type"])
    )
    assert reason(error) == "DYNAMIC_ONLY"
    error = await rpc_error(qr.update(owner, QrCode(name=static_code.name, rules=LinkRules(max_scans=1)), ["rules"]))
    assert reason(error) == "DYNAMIC_ONLY"


async def test_password_is_hashed_kept_and_removed(qr: Clients, owner: Account, redis_client: redis.Redis) -> None:
    created = await qr.create(owner, dynamic(rules=LinkRules(password="open sesame", max_scans=5)))
    assert created.rules.password_protected
    assert created.rules.password == ""
    stored = await links.get(redis_client, created.short_code)
    assert stored is not None
    assert stored.link is not None
    hashed = stored.link.password_hash
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PasswordHasher().verify(hashed, "open sesame")
    assert stored.link.rules.password == ""
    assert stored.link.rules.password_protected

    kept = await qr.update(owner, QrCode(name=created.name, rules=LinkRules(max_scans=9)), ["rules.max_scans"])
    assert kept.rules.password_protected
    assert kept.rules.max_scans == 9
    whole = await qr.update(owner, QrCode(name=created.name, rules=LinkRules(max_scans=4)), ["rules"])
    assert whole.rules.password_protected
    assert whole.rules.max_scans == 4
    changed = await qr.update(owner, QrCode(name=created.name, rules=LinkRules(password="new one")), ["rules.password"])
    assert changed.rules.password_protected
    assert changed.rules.max_scans == 4
    stored = await links.get(redis_client, created.short_code)
    assert stored is not None
    assert stored.link is not None
    assert PasswordHasher().verify(stored.link.password_hash, "new one")
    removed = await qr.update(owner, QrCode(name=created.name), ["rules.password"])
    assert not removed.rules.password_protected
    stored = await links.get(redis_client, created.short_code)
    assert stored is not None
    assert stored.link is not None
    assert stored.link.password_hash == ""


# ---------------------------------------------------------------- rendering


async def test_rendered_dynamic_code_encodes_its_short_url(qr: Clients, owner: Account) -> None:
    created = await qr.create(owner, dynamic("https://example.com/first"))
    request = svc.RenderStoredQrCodeRequest(name=created.name, size=300)
    call = qr.codes.RenderStoredQrCode(request, metadata=owner.metadata())
    body = await call
    headers = dict(await call.initial_metadata())
    assert body.content_type == "image/png"
    assert decode_png(body.data) == [created.short_url]
    assert headers["cache-control"] == "private, max-age=0, must-revalidate"
    assert re.fullmatch(r'"[0-9a-f]{64}"', str(headers["etag"]))

    await qr.update(owner, QrCode(name=created.name, content=url_content("https://example.com/second")), ["content"])
    again = await qr.codes.RenderStoredQrCode(request, metadata=owner.metadata())
    assert again.data == body.data

    restyled = await qr.update(
        owner, QrCode(name=created.name, design=design_pb2.Design(foreground="#1a237e")), ["design"]
    )
    assert restyled.design.foreground == "#1a237e"
    styled = await qr.codes.RenderStoredQrCode(request, metadata=owner.metadata())
    assert styled.data != body.data
    assert decode_png(styled.data) == [created.short_url]

    svg = await qr.codes.RenderStoredQrCode(
        svc.RenderStoredQrCodeRequest(name=created.name, format=svc.RenderQrCodeRequest.SVG), metadata=owner.metadata()
    )
    assert svg.content_type == "image/svg+xml"
    assert b"<svg" in svg.data


async def test_rendered_static_code_encodes_its_content(qr: Clients, owner: Account) -> None:
    created = await qr.create(owner, QrCode(kind=QrCode.STATIC, content=url_content("https://example.com/x")))
    body = await qr.codes.RenderStoredQrCode(
        svc.RenderStoredQrCodeRequest(name=created.name), metadata=owner.metadata()
    )
    assert decode_png(body.data) == ["https://example.com/x"]


# ---------------------------------------------------------------- links: Redis, announcements, LinkService


async def test_links_are_written_and_announced(qr: Clients, owner: Account, redis_client: redis.Redis) -> None:
    pubsub: Any = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(links.CHANNEL)
    try:
        created = await qr.create(owner, dynamic("https://example.com/a", short_code=alias("ann")))
        stored = await links.get(redis_client, created.short_code)
        assert stored is not None
        assert stored.link is not None
        assert (stored.version, stored.link.version) == (1, 1)
        assert stored.link.destination_url == "https://example.com/a"
        assert (stored.link.qr_code, stored.link.organization) == (created.name, owner.organization)
        assert 0 < await redis_client.ttl(links.key(created.short_code)) <= links.LINK_TTL_SECONDS

        await qr.update(
            owner,
            QrCode(name=created.name, content=url_content("https://example.com/b"), status=QrCode.PAUSED),
            ["content", "status"],
        )
        stored = await links.get(redis_client, created.short_code)
        assert stored is not None
        assert stored.link is not None
        assert (stored.version, stored.link.destination_url) == (2, "https://example.com/b")
        assert stored.link.status == QrCode.PAUSED

        announced: list[bytes] = []
        async with asyncio.timeout(5):
            while len(announced) < 2:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["data"] == created.short_code.encode():
                    announced.append(message["data"])
    finally:
        await pubsub.aclose()


async def test_resolve_link_for_the_redirect(qr: Clients, owner: Account, redis_client: redis.Redis) -> None:
    rules = LinkRules(max_scans=3, password="pass1234", fallback_url="https://example.com/closed")
    created = await qr.create(
        owner, dynamic("https://example.com/go", rules=rules, redirect_type=QrCode.MOVED_PERMANENTLY)
    )
    await redis_client.delete(links.key(created.short_code))
    link = await qr.links.ResolveLink(
        svc.ResolveLinkRequest(short_code=created.short_code), metadata=service_metadata()
    )
    assert link.short_code == created.short_code
    assert link.qr_code == created.name
    assert (link.status, link.destination_url, link.redirect_status) == (QrCode.ACTIVE, "https://example.com/go", 301)
    assert link.rules.max_scans == 3
    assert link.rules.fallback_url == "https://example.com/closed"
    assert link.rules.password == ""
    assert link.rules.password_protected
    assert link.password_hash.startswith("$argon2id$")
    assert (link.store_full_ip_addresses, link.version) == (False, 1)
    stored = await links.get(redis_client, created.short_code)
    assert stored is not None
    assert stored.link == link

    error = await rpc_error(qr.links.ResolveLink(svc.ResolveLinkRequest(short_code=created.short_code)))
    assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "SERVICE_ONLY")
    error = await rpc_error(
        qr.links.ResolveLink(svc.ResolveLinkRequest(short_code=created.short_code), metadata=owner.metadata())
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    unknown = alias("nobody")
    error = await rpc_error(
        qr.links.ResolveLink(svc.ResolveLinkRequest(short_code=unknown), metadata=service_metadata())
    )
    assert (error.code(), reason(error)) == (grpc.StatusCode.NOT_FOUND, "SHORT_CODE_NOT_FOUND")
    assert await redis_client.get(links.key(unknown)) == b"0:"


async def test_claim_scan_is_exact_under_concurrency(qr: Clients, owner: Account) -> None:
    created = await qr.create(owner, dynamic(rules=LinkRules(max_scans=50)))
    request = svc.ClaimScanRequest(short_code=created.short_code)
    answers = await asyncio.gather(*(qr.links.ClaimScan(request, metadata=service_metadata()) for _ in range(200)))
    allowed = [answer for answer in answers if answer.allowed]
    assert len(allowed) == 50
    assert sorted(answer.claimed for answer in allowed) == list(range(1, 51))
    assert all(answer.max_scans == 50 and answer.claimed == 50 for answer in answers if not answer.allowed)

    # A higher limit keeps what was claimed: ten more scans fit.
    await qr.update(owner, QrCode(name=created.name, rules=LinkRules(max_scans=60)), ["rules.max_scans"])
    more = await asyncio.gather(*(qr.links.ClaimScan(request, metadata=service_metadata()) for _ in range(20)))
    assert sum(answer.allowed for answer in more) == 10

    unlimited = await qr.create(owner, dynamic())
    answer = await qr.links.ClaimScan(
        svc.ClaimScanRequest(short_code=unlimited.short_code), metadata=service_metadata()
    )
    assert (answer.allowed, answer.claimed, answer.max_scans) == (True, 1, 0)
    error = await rpc_error(
        qr.links.ClaimScan(svc.ClaimScanRequest(short_code=alias("none")), metadata=service_metadata())
    )
    assert reason(error) == "SHORT_CODE_NOT_FOUND"


@pytest.fixture
async def private_database(postgres_admin_url: str) -> AsyncIterator[str]:
    """A database of its own with the qr schema migrated: no other qr service touches its links."""
    admin = make_url(postgres_admin_url).set(drivername="postgresql")
    name = f"qrmesh_test_links_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = admin.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, schema="qr")
    migrations = qr_server_module.SPEC.migrations
    assert migrations is not None
    await migrate(engine, migrations, "qr")
    await engine.dispose()
    yield url
    connection = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def test_links_reach_redis_after_an_outage(
    settings: Settings, private_database: str, redis_client: redis.Redis
) -> None:
    """Redis failing after the commit does not fail the change; the link is written once Redis is back."""
    address = redis_client.connection_pool.connection_kwargs
    proxy = TcpProxy(address.get("host", "127.0.0.1"), address.get("port", 6379))
    await proxy.start()
    engine = create_engine(private_database, schema="qr")
    client = redis.from_url(f"redis://127.0.0.1:{proxy.listen_port}/0", socket_connect_timeout=1, socket_timeout=1)
    codes = QrCodes(engine, client, public_base_url=settings.public_base_url, plans=UNLIMITED)
    organization = ids.new_id()
    try:
        created = await codes.create(organization, dynamic("https://example.com/one", short_code=alias("outage")), "")
        assert created.short_code is not None
        await proxy.cut()
        updated = await codes.update(
            organization, created.id, dynamic("https://example.com/two"), plan_update(["content"])
        )
        assert updated.content != created.content
        stored = await links.get(redis_client, created.short_code)
        assert stored is not None
        assert stored.link is not None
        assert (stored.version, stored.link.destination_url) == (1, "https://example.com/one")
        async with engine.connect() as connection:
            behind = await connection.scalar(
                text("SELECT version - published_version FROM qr.short_codes WHERE short_code = :c"),
                {"c": created.short_code},
            )
        assert behind == 1

        await codes.start()  # the background task keeps trying ...
        await asyncio.sleep(0.5)
        await proxy.start()  # ... and succeeds once Redis answers again
        async with asyncio.timeout(15):
            while True:
                stored = await links.get(redis_client, created.short_code)
                assert stored is not None
                assert stored.link is not None
                if stored.link.destination_url == "https://example.com/two":
                    break
                await asyncio.sleep(0.1)
        assert stored.version == 2
        # The version is recorded as published right after the write to Redis: wait for that commit too.
        async with asyncio.timeout(15):
            while True:
                async with engine.connect() as connection:
                    behind = await connection.scalar(
                        text("SELECT version - published_version FROM qr.short_codes WHERE short_code = :c"),
                        {"c": created.short_code},
                    )
                if behind == 0:
                    break
                await asyncio.sleep(0.1)
    finally:
        await codes.close()
        await proxy.cut()
        with contextlib.suppress(Exception):
            await client.aclose()
        await engine.dispose()


# ---------------------------------------------------------------- scan settings


async def test_scan_settings_reach_every_link(qr: Clients, fresh: Account, redis_client: redis.Redis) -> None:
    name = f"{fresh.organization}/scanSettings"
    default = await qr.codes.GetScanSettings(svc.GetScanSettingsRequest(name=name), metadata=fresh.metadata())
    assert (default.name, default.store_full_ip_addresses, default.HasField("update_time")) == (name, False, False)
    code = await qr.create(fresh, dynamic())
    request = svc.UpdateScanSettingsRequest(
        scan_settings=stored_qr_code_pb2.ScanSettings(name=name, store_full_ip_addresses=True)
    )
    updated = await qr.codes.UpdateScanSettings(request, metadata=fresh.metadata())
    assert updated.store_full_ip_addresses
    assert updated.HasField("update_time")
    stored = await links.get(redis_client, code.short_code)
    assert stored is not None
    assert stored.link is not None
    assert (stored.version, stored.link.store_full_ip_addresses) == (2, True)
    got = await qr.codes.GetScanSettings(svc.GetScanSettingsRequest(name=name), metadata=fresh.metadata())
    assert got == updated

    bad = svc.UpdateScanSettingsRequest(scan_settings=stored_qr_code_pb2.ScanSettings(name=name))
    bad.update_mask.paths.append("retention")
    error = await rpc_error(qr.codes.UpdateScanSettings(bad, metadata=fresh.metadata()))
    assert reason(error) == "INVALID_UPDATE_MASK"


# ---------------------------------------------------------------- who may do what


async def test_roles_and_api_key_scopes(qr: Clients, identity: grpc.aio.Channel, fresh: Account) -> None:
    created = await qr.create(fresh, static())
    viewer = await member(identity, fresh, policy_pb2.VIEWER, "viewer")
    assert (await qr.get(viewer, created.name)).name == created.name
    assert (await qr.list(viewer)).total_size == 1
    error = await rpc_error(qr.create(viewer, static()))
    assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    error = await rpc_error(qr.delete(viewer, created.name))
    assert reason(error) == "ROLE_REQUIRED"
    editor = await member(identity, fresh, policy_pb2.EDITOR, "editor")
    assert (await qr.create(editor, static())).name
    settings_request = svc.UpdateScanSettingsRequest(
        scan_settings=stored_qr_code_pb2.ScanSettings(name=f"{fresh.organization}/scanSettings")
    )
    error = await rpc_error(qr.codes.UpdateScanSettings(settings_request, metadata=editor.metadata()))
    assert reason(error) == "ROLE_REQUIRED"

    reader = api_key_metadata(await api_key(identity, fresh, "qr:read"))
    writer = api_key_metadata(await api_key(identity, fresh, "qr:write"))
    listed = await qr.codes.ListQrCodes(svc.ListQrCodesRequest(parent=fresh.organization), metadata=reader)
    assert listed.total_size == 2
    create = svc.CreateQrCodeRequest(parent=fresh.organization, qr_code=static("by key"))
    error = await rpc_error(qr.codes.CreateQrCode(create, metadata=reader))
    assert (error.code(), reason(error)) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_REQUIRED")
    assert (await qr.codes.CreateQrCode(create, metadata=writer)).content.text.text == "by key"
    error = await rpc_error(qr.codes.UpdateScanSettings(settings_request, metadata=writer))
    assert reason(error) == "USER_REQUIRED"
    other = await sign_up(identity, "outsider")
    error = await rpc_error(qr.get(Account(other.email, other.user, other.token, fresh.organization), created.name))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
