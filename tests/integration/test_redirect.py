"""The redirect over real HTTP, in front of the real qr service and Redis: rules
that need the network (scan limits, passwords and their throttle, pauses),
edits seen within a second, and every scan in the `scans` stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2

from qrmesh.platform.server import Server
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc, stored_qr_code_pb2
from qrmesh.scans.v1 import scan_event_pb2
from tests.integration.billing_helpers import subscribe
from tests.integration.identity_helpers import Account, sign_up

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
Outcome = scan_event_pb2.ScanEvent.Outcome


@pytest.fixture
async def account(identity_server: Server, billing_server: Server) -> Account:
    """An owner of an organization on Pro (passwords and schedules are Pro features)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        account = await sign_up(channel, "redirector")
    await subscribe(billing_server, account, "pro")
    return account


@pytest.fixture
async def codes(qr_server: Server) -> AsyncIterator[qr_code_service_pb2_grpc.QrCodeServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{qr_server.port}") as channel:
        yield qr_code_service_pb2_grpc.QrCodeServiceStub(channel)


@pytest.fixture
async def http(redirect_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{redirect_server.resources.ports['http']}"
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10, headers={"user-agent": IPHONE}) as client:
        yield client


async def create(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub,
    account: Account,
    url: str,
    rules: stored_qr_code_pb2.LinkRules | None = None,
    **fields: object,
) -> stored_qr_code_pb2.QrCode:
    qr_code = stored_qr_code_pb2.QrCode(
        display_name="test",
        kind=stored_qr_code_pb2.QrCode.DYNAMIC,
        content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url=url)),
        **fields,  # type: ignore[arg-type]
    )
    if rules is not None:
        qr_code.rules.CopyFrom(rules)
    request = qr_code_service_pb2.CreateQrCodeRequest(parent=account.organization, qr_code=qr_code)
    created: stored_qr_code_pb2.QrCode = await codes.CreateQrCode(request, metadata=account.metadata())
    return created


async def update(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub,
    account: Account,
    qr_code: stored_qr_code_pb2.QrCode,
    *paths: str,
) -> stored_qr_code_pb2.QrCode:
    request = qr_code_service_pb2.UpdateQrCodeRequest(
        qr_code=qr_code, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
    )
    updated: stored_qr_code_pb2.QrCode = await codes.UpdateQrCode(request, metadata=account.metadata())
    return updated


async def events_for(redis_url: str, short_code: str, count: int, wait: float = 5.0) -> list[scan_event_pb2.ScanEvent]:
    """This code's events in the `scans` stream, reading only the newest entries (the stream is shared)."""
    client = aioredis.Redis.from_url(redis_url)
    deadline = time.monotonic() + wait
    try:
        while True:
            entries: Any = await client.xrevrange("scans", "+", "-", count=5000)
            found = [
                event
                for _, fields in reversed(entries)
                if (event := scan_event_pb2.ScanEvent.FromString(fields[b"event"])).short_code == short_code
            ]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_scan_redirects_and_is_recorded(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub,
    account: Account,
    http: httpx.AsyncClient,
    redirect_server: Server,
) -> None:
    code = await create(
        codes, account, "https://example.com/a?x=1", redirect_type=stored_qr_code_pb2.QrCode.TEMPORARY_REDIRECT
    )
    first = await http.get(f"/r/{code.short_code}")
    assert first.status_code == 307
    assert first.headers["location"] == "https://example.com/a?x=1"
    second = await http.get(f"/r/{code.short_code}")  # now from memory
    assert second.headers["location"] == "https://example.com/a?x=1"
    events = await events_for(redirect_server.resources.settings.redis_url, code.short_code, 2)
    assert [e.outcome for e in events] == [Outcome.REDIRECTED, Outcome.REDIRECTED]
    assert len({e.event_id for e in events}) == 2
    assert events[0].ip_address == "127.0.0.0"  # anonymized: the /24 of the loopback peer


async def test_an_edit_is_seen_within_a_second(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub, account: Account, http: httpx.AsyncClient
) -> None:
    code = await create(codes, account, "https://example.com/old")
    assert (await http.get(f"/r/{code.short_code}")).headers["location"] == "https://example.com/old"
    code.content.url.url = "https://example.com/new"
    code = await update(codes, account, code, "content")
    changed_at = time.monotonic()
    while True:
        answer = await http.get(f"/r/{code.short_code}")
        if answer.headers["location"] == "https://example.com/new":
            break
        assert time.monotonic() - changed_at < 1.0, "the edit was not visible within 1 s"
        await asyncio.sleep(0.01)
    # Pausing works the same way.
    code.status = stored_qr_code_pb2.QrCode.PAUSED
    await update(codes, account, code, "status")
    changed_at = time.monotonic()
    while (await http.get(f"/r/{code.short_code}")).status_code in (301, 302, 307, 308):
        assert time.monotonic() - changed_at < 1.0
        await asyncio.sleep(0.01)
    paused = await http.get(f"/r/{code.short_code}")
    assert "location" not in paused.headers
    assert paused.headers["content-type"].startswith("text/html")


async def test_max_scans_is_exact_under_200_concurrent_scans(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub,
    account: Account,
    http: httpx.AsyncClient,
    redirect_server: Server,
) -> None:
    code = await create(codes, account, "https://example.com/limited", stored_qr_code_pb2.LinkRules(max_scans=50))
    answers = await asyncio.gather(*(http.get(f"/r/{code.short_code}") for _ in range(200)))
    redirected = [a for a in answers if a.status_code == 302]
    assert len(redirected) == 50
    refused = [a for a in answers if a.status_code != 302]
    assert len(refused) == 150
    assert all("location" not in a.headers for a in refused)
    # Every server here shares one event loop with the client, so a claim can time out (503,
    # "try again", not recorded); what must hold is that no scan beyond the 50th is redirected.
    assert {a.status_code for a in refused} <= {410, 503}
    limit_pages = sum(a.status_code == 410 for a in refused)
    events = await events_for(redirect_server.resources.settings.redis_url, code.short_code, 50 + limit_pages)
    outcomes = [e.outcome for e in events]
    assert outcomes.count(Outcome.REDIRECTED) == 50
    assert outcomes.count(Outcome.LIMIT_REACHED) == limit_pages


async def test_limit_reached_goes_to_the_fallback_url_when_set(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub, account: Account, http: httpx.AsyncClient
) -> None:
    rules = stored_qr_code_pb2.LinkRules(max_scans=1, fallback_url="https://example.com/sold-out")
    code = await create(codes, account, "https://example.com/ticket", rules)
    assert (await http.get(f"/r/{code.short_code}")).headers["location"] == "https://example.com/ticket"
    assert (await http.get(f"/r/{code.short_code}")).headers["location"] == "https://example.com/sold-out"


async def test_expired_and_not_yet_active(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub, account: Account, http: httpx.AsyncClient
) -> None:
    now = datetime.now(UTC)
    expired = stored_qr_code_pb2.LinkRules()
    expired.not_before.FromDatetime(now - timedelta(days=2))
    expired.not_after.FromDatetime(now - timedelta(days=1))
    code = await create(codes, account, "https://example.com/over", expired)
    answer = await http.get(f"/r/{code.short_code}")
    assert "location" not in answer.headers
    assert answer.status_code >= 400
    later = stored_qr_code_pb2.LinkRules(fallback_url="https://example.com/soon")
    later.not_before.FromDatetime(now + timedelta(days=1))
    code = await create(codes, account, "https://example.com/launch", later)
    assert (await http.get(f"/r/{code.short_code}")).headers["location"] == "https://example.com/soon"


async def test_password_page_check_and_throttle(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub,
    account: Account,
    http: httpx.AsyncClient,
    redirect_server: Server,
) -> None:
    code = await create(
        codes, account, "https://example.com/secret", stored_qr_code_pb2.LinkRules(password="open sesame")
    )
    assert code.rules.password_protected
    assert code.rules.password == ""
    page = await http.get(f"/r/{code.short_code}")
    assert "location" not in page.headers
    assert f'action="/r/{code.short_code}"' in page.text
    assert 'name="password"' in page.text

    wrong = await http.post(f"/r/{code.short_code}", data={"password": "guess"})
    assert "location" not in wrong.headers
    right = await http.post(f"/r/{code.short_code}", data={"password": "open sesame"})
    assert right.status_code == 303
    assert right.headers["location"] == "https://example.com/secret"

    # Guessing from one address is throttled; the right password is refused too while throttled.
    attempts = redirect_server.resources.settings.extra.get("PASSWORD_ATTEMPTS", "10")
    for _ in range(int(attempts) + 1):
        await http.post(f"/r/{code.short_code}", data={"password": "guess"})
    throttled = await http.post(f"/r/{code.short_code}", data={"password": "open sesame"})
    assert throttled.status_code == 429
    assert "location" not in throttled.headers
    events = await events_for(redirect_server.resources.settings.redis_url, code.short_code, 15)
    outcomes = {e.outcome for e in events}
    assert {
        Outcome.PASSWORD_REQUIRED,
        Outcome.PASSWORD_REJECTED,
        Outcome.PASSWORD_THROTTLED,
        Outcome.REDIRECTED,
    } <= outcomes


async def test_unknown_and_malformed_codes(http: httpx.AsyncClient) -> None:
    assert (await http.get("/r/doesNotExist1")).status_code == 404
    assert (await http.get("/r/%3Cscript%3E")).status_code == 404
    assert (await http.get("/r/" + "a" * 300)).status_code == 404
    assert (await http.get("/elsewhere")).status_code == 404
    assert (await http.put("/r/doesNotExist1")).status_code == 405
    assert (await http.get("/healthz")).status_code == 200


async def test_deleted_code_stops_redirecting(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub, account: Account, http: httpx.AsyncClient
) -> None:
    code = await create(codes, account, "https://example.com/gone")
    assert (await http.get(f"/r/{code.short_code}")).status_code == 302
    await codes.DeleteQrCode(qr_code_service_pb2.DeleteQrCodeRequest(name=code.name), metadata=account.metadata())
    deadline = time.monotonic() + 1.0
    while (await http.get(f"/r/{code.short_code}")).status_code != 404:
        assert time.monotonic() < deadline, "a deleted code still redirected after 1 s"
        await asyncio.sleep(0.01)


async def test_a_spent_limit_hides_the_destination_from_bots_curl_and_head(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub, account: Account, http: httpx.AsyncClient
) -> None:
    code = await create(codes, account, "https://example.com/coupon", stored_qr_code_pb2.LinkRules(max_scans=1))
    assert (await http.get(f"/r/{code.short_code}")).headers["location"] == "https://example.com/coupon"
    for answer in (
        await http.get(f"/r/{code.short_code}", headers={"user-agent": ""}),
        await http.get(f"/r/{code.short_code}", headers={"user-agent": "curl/8.5.0"}),
        await http.get(f"/r/{code.short_code}", headers={"user-agent": "facebookexternalhit/1.1"}),
        await http.head(f"/r/{code.short_code}"),
        await http.get(f"/r/{code.short_code}"),
    ):
        assert "location" not in answer.headers
        assert answer.status_code == 410


async def test_size_limits_have_their_own_answers(redirect_server: Server) -> None:
    port = redirect_server.resources.ports["http"]

    async def raw(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        answer = await reader.read(4096)
        writer.close()
        return answer

    assert (await raw(b"GET /r/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 414 ")
    huge = b"x-filler: " + b"y" * 40_000 + b"\r\n"
    assert (await raw(b"GET /r/abc HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n")).startswith(b"HTTP/1.1 431 ")
    body = b"password=" + b"z" * 9000
    post = b"POST /r/abc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert (await raw(post)).startswith(b"HTTP/1.1 413 ")
    assert (await raw(b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_pipelined_requests_are_answered_in_order(
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub, account: Account, redirect_server: Server
) -> None:
    first = await create(codes, account, "https://example.com/one")
    limited = await create(codes, account, "https://example.com/two", stored_qr_code_pb2.LinkRules(max_scans=5))
    reader, writer = await asyncio.open_connection("127.0.0.1", redirect_server.resources.ports["http"])
    # fast (cold: slow), slow (a claim), fast, then HEAD: one write, four answers in order.
    writer.write(
        b"".join(
            b"%s /r/%s HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n" % (method, code.encode())
            for method, code in (
                (b"GET", first.short_code),
                (b"GET", limited.short_code),
                (b"GET", first.short_code),
                (b"HEAD", first.short_code),
            )
        )
    )
    await writer.drain()
    data = b""
    while data.count(b"\r\n\r\n") < 4:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, "the connection closed early"
        data += chunk
    writer.close()
    locations = [line.split(b": ", 1)[1] for line in data.split(b"\r\n") if line.lower().startswith(b"location:")]
    assert locations == [
        b"https://example.com/one",
        b"https://example.com/two",
        b"https://example.com/one",
        b"https://example.com/one",
    ]
