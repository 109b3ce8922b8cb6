"""Rate limits on real servers over gRPC, in a real Redis: the script against the Python arithmetic,
per API key, per user (across organizations), per address, services exempt, streams charged once, plan
policies plugged in, and the limiter failing open when Redis is gone."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qrmesh.analytics.v1 import analytics_service_pb2 as analytics
from qrmesh.identity.client import remote_access
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform.auth import Principal
from qrmesh.platform.interceptors import rich_status
from qrmesh.platform.metrics import REGISTRY
from qrmesh.platform.ratelimit import MICROS, SCRIPT_SHA, Rate, RateLimiter, SettingsRatePolicy, decide
from qrmesh.platform.server import Resources, Server, ServiceSpec, create_server
from qrmesh.platform.settings import Settings
from qrmesh.qr import server as qr_server_module
from qrmesh.qr.v1 import qr_code_pb2
from qrmesh.qr.v1 import qr_code_service_pb2 as svc
from tests.integration.billing_helpers import subscribe
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import Clients, api_key, api_key_metadata, service_metadata
from tests.integration.redis_process import RedisProcess, server_binary

BURST = 3


# The qr service with the settings' rates and plain access: what the limiter does on its own, whatever
# plans the billing service plugs in.
SETTINGS_ONLY = dataclasses.replace(qr_server_module.SPEC, rate_policy=None, access=remote_access)


def tiny(settings: Settings) -> Settings:
    """Every caller may make 3 calls at once, then 1 a second."""
    return dataclasses.replace(
        settings,
        rate_user_per_second=1.0,
        rate_user_burst=BURST,
        rate_api_key_per_second=1.0,
        rate_api_key_burst=BURST,
        rate_anonymous_per_second=1.0,
        rate_anonymous_burst=BURST,
    )


QR_SERVICE = "qrmesh.qr.v1.QrCodeService"


class Clock:
    """Microseconds since the epoch, moved by hand: the `now` the limiter passes to its script."""

    def __init__(self) -> None:
        self.now = time.time_ns() // 1000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * MICROS)


async def forget(client: redis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture(scope="module")
async def limited(settings: Settings) -> AsyncIterator[Server]:
    """A qr service allowing every caller 3 calls at once, then 1 a second, on a hand-moved clock, with
    bucket keys under a prefix of its own."""
    server, _ = await create_server(tiny(settings), SETTINGS_ONLY)
    limiter = server.rate_limiter
    assert limiter is not None
    limiter.prefix = f"qrmesh:ratelimit:test-{secrets.token_hex(4)}:"
    await server.start()
    yield server
    await server.stop(0)
    async with redis.Redis.from_url(settings.redis_url) as client:
        await forget(client, limiter.prefix)


@pytest.fixture
async def clock(limited: Server, settings: Settings) -> AsyncIterator[Clock]:
    """A hand-moved clock, and bucket keys of this test's own: random addresses of two tests may meet."""
    limiter = limited.rate_limiter
    assert limiter is not None
    module_prefix = limiter.prefix
    limiter.prefix = f"{module_prefix}{secrets.token_hex(4)}:"
    limiter.clock = clock = Clock()
    yield clock
    limiter.clock = None
    async with redis.Redis.from_url(settings.redis_url) as client:
        await forget(client, limiter.prefix)
    limiter.prefix = module_prefix


@pytest.fixture(scope="module")
async def identity(identity_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
async def qr(limited: Server) -> AsyncIterator[Clients]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
        yield Clients.on(channel)


def limited_count(service: str, kind: str) -> float:
    return REGISTRY.get_sample_value("qrmesh_rate_limited_total", {"grpc_service": service, "key_kind": kind}) or 0.0


def failures(service: str, cause: str) -> float:
    return (
        REGISTRY.get_sample_value("qrmesh_rate_limiter_failures_total", {"grpc_service": service, "cause": cause})
        or 0.0
    )


def assert_rate_limited(error: grpc.aio.AioRpcError, kind: str, retry_after: int) -> None:
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rich_status(error)
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "RATE_LIMITED"
    assert dict(info.metadata) == {
        "limit": str(BURST),
        "per_second": "1",
        "retry_after_seconds": str(retry_after),
        "key_kind": kind,
    }
    assert status.details[1].Unpack(retry)
    assert 0 < retry.retry_delay.ToNanoseconds() <= retry_after * 1_000_000_000
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["retry-after"] == str(retry_after)
    assert trailers["x-ratelimit-remaining"] == "0"


async def list_codes(qr: Clients, account: Account) -> tuple[svc.ListQrCodesResponse, dict[str, Any]]:
    call = qr.codes.ListQrCodes(svc.ListQrCodesRequest(parent=account.organization), metadata=account.metadata())
    answer = await call
    return answer, dict(await call.initial_metadata() or ())


async def test_the_script_and_the_python_arithmetic_agree(settings: Settings) -> None:
    key = f"qrmesh:ratelimit:test-{secrets.token_hex(4)}:agree"
    rate = Rate(per_second=3, burst=4)
    async with redis.Redis.from_url(settings.redis_url) as client:
        limiter = RateLimiter(
            policy=SettingsRatePolicy(user=None, api_key=None), anonymous=None, client=client, service_secret=""
        )
        clock = Clock()
        limiter.clock = clock
        tat: int | None = None
        try:
            for gap in [0, 0, 0, 0, 0, 0.1, 0.2, 0.34, 0, 1.5, 0, 0, 0, 0, 0, 10, 0]:
                clock.advance(gap)
                expected = decide(rate, tat, clock.now)
                if expected.tat is not None:
                    tat = expected.tat
                got = await limiter.charge(key, rate)
                assert got == dataclasses.replace(expected, tat=None)
            # The key lives no longer than it takes the bucket to fill again.
            assert 0 < await client.pttl(key) <= 4 * rate.interval // 1000 + 1
            # On Redis's own clock (no `now`), a fresh bucket allows the burst.
            limiter.clock = None
            await client.delete(key)
            slow = Rate(per_second=0.01, burst=4)  # refills in 100 s: no timing in the test
            answers = [await limiter.charge(key, slow) for _ in range(5)]
            assert [a.allowed for a in answers if a] == [True, True, True, True, False]
        finally:
            await client.delete(key)


async def test_the_script_is_loaded_again_when_redis_has_forgotten_it(tmp_path: Path) -> None:
    binary = server_binary()
    assert binary is not None, "no redis-server or valkey-server binary"
    own = RedisProcess(binary, tmp_path / "redis")  # SCRIPT FLUSH on a Redis of our own only
    own.start()
    try:
        async with redis.Redis.from_url(own.url) as client:
            limiter = RateLimiter(
                policy=SettingsRatePolicy(user=None, api_key=None), anonymous=None, client=client, service_secret=""
            )
            assert (await limiter.charge("bucket", Rate(1, 5))) is not None  # loaded on first use
            assert await client.script_exists(SCRIPT_SHA) == [True]
            await client.script_flush()  # what a restarted Redis knows
            decision = await limiter.charge("bucket", Rate(1, 5))
            assert decision is not None
            assert decision.remaining == 3
            assert await client.script_exists(SCRIPT_SHA) == [True]
    finally:
        own.kill()


async def test_a_user_gets_the_burst_then_is_refused_until_time_passes(
    qr: Clients, identity: grpc.aio.Channel, clock: Clock
) -> None:
    account = await sign_up(identity, "burst")
    before = limited_count(QR_SERVICE, "user")
    remaining = []
    for _ in range(BURST):
        _, headers = await list_codes(qr, account)
        remaining.append(headers["x-ratelimit-remaining"])
        assert headers["x-ratelimit-limit"] == str(BURST)
    assert remaining == ["2", "1", "0"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_codes(qr, account)
    assert_rate_limited(refused.value, "user", 1)
    assert limited_count(QR_SERVICE, "user") == before + 1

    clock.advance(0.5)
    with pytest.raises(grpc.aio.AioRpcError):
        await list_codes(qr, account)
    clock.advance(0.5)
    await list_codes(qr, account)  # one interval later: one more call
    clock.advance(BURST)
    for _ in range(BURST):  # a full burst again, never more
        await list_codes(qr, account)
    with pytest.raises(grpc.aio.AioRpcError):
        await list_codes(qr, account)


async def test_users_are_limited_apart_from_each_other_and_across_their_organizations(
    qr: Clients, identity: grpc.aio.Channel, clock: Clock
) -> None:
    busy = await sign_up(identity, "busy")
    calm = await sign_up(identity, "calm")
    for _ in range(BURST):
        await list_codes(qr, busy)
    with pytest.raises(grpc.aio.AioRpcError):
        await list_codes(qr, busy)
    await list_codes(qr, calm)
    # A second organization of the same user is no fresh budget: one person, one bucket.
    second = await identity_service_pb2_grpc.OrganizationServiceStub(identity).CreateOrganization(
        identity_service_pb2.CreateOrganizationRequest(organization=identity_pb2.Organization(display_name="second")),
        metadata=busy.metadata(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await list_codes(qr, dataclasses.replace(busy, organization=second.name))
    assert_rate_limited(refused.value, "user", 1)


async def test_api_keys_are_limited_apart_from_each_other(
    qr: Clients, identity: grpc.aio.Channel, billing_server: Server, clock: Clock
) -> None:
    owner = await sign_up(identity, "keys")
    await subscribe(billing_server, owner, "pro")  # a plan with API access
    first, second = await api_key(identity, owner, "qr:read"), await api_key(identity, owner, "qr:read")
    request = svc.ListQrCodesRequest(parent=owner.organization)
    for _ in range(BURST):
        await qr.codes.ListQrCodes(request, metadata=api_key_metadata(first))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await qr.codes.ListQrCodes(request, metadata=api_key_metadata(first))
    assert_rate_limited(refused.value, "api_key", 1)
    # Key B, and the user who made both keys, are untouched by key A's use.
    for _ in range(BURST):
        await qr.codes.ListQrCodes(request, metadata=api_key_metadata(second))
    await list_codes(qr, owner)


def render_request() -> svc.RenderQrCodeRequest:
    return svc.RenderQrCodeRequest(
        content=qr_code_pb2.Content(text=qr_code_pb2.TextPayload(text="limits")), format=svc.RenderQrCodeRequest.SVG
    )


def from_address(address: str) -> tuple[tuple[str, str], ...]:
    return (("x-qrmesh-client-ip", address),)  # what the edge sets; believed from a loopback peer


async def test_anonymous_callers_are_limited_per_address(qr: Clients, clock: Clock) -> None:
    first, second = f"198.51.100.{secrets.randbelow(250) + 1}", f"2001:db8:{secrets.randbelow(65535):x}::1"
    for _ in range(BURST):
        await qr.codes.RenderQrCode(render_request(), metadata=from_address(first))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await qr.codes.RenderQrCode(render_request(), metadata=from_address(first))
    assert_rate_limited(refused.value, "address", 1)
    for _ in range(BURST):
        await qr.codes.RenderQrCode(render_request(), metadata=from_address(second))
    # The rest of the same IPv6 /64 is the same subscriber.
    with pytest.raises(grpc.aio.AioRpcError):
        await qr.codes.RenderQrCode(render_request(), metadata=from_address(second.replace("::1", "::2")))


async def test_refused_credentials_cost_their_address(qr: Clients, clock: Clock) -> None:
    """Guessing API keys or tokens is limited like any anonymous caller: after the burst, 429 not 401."""
    address = f"198.51.100.{secrets.randbelow(250) + 1}"
    request = svc.ListQrCodesRequest(parent="organizations/someone")
    for attempt in range(BURST):
        guess = (("x-api-key", f"qrk_guess{attempt}"), *from_address(address))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await qr.codes.ListQrCodes(request, metadata=guess)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await qr.codes.ListQrCodes(request, metadata=(("authorization", "Bearer x.y.z"), *from_address(address)))
    assert_rate_limited(limited.value, "address", 1)


async def test_other_services_are_never_limited(qr: Clients, clock: Clock) -> None:
    address = f"198.51.100.{secrets.randbelow(250) + 1}"
    for _ in range(BURST * 3):
        # An internal RPC, and a public one called with a service token, from one address.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await qr.links.ResolveLink(svc.ResolveLinkRequest(short_code="nosuch"), metadata=service_metadata())
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
        await qr.codes.RenderQrCode(render_request(), metadata=(*service_metadata(), *from_address(address)))
    # A forged token is just an anonymous caller.
    forged = (("x-qrmesh-service-token", "redirect.1.abc"), *from_address(address))
    for _ in range(BURST):
        await qr.codes.RenderQrCode(render_request(), metadata=forged)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await qr.codes.RenderQrCode(render_request(), metadata=forged)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_health_checks_are_never_limited(limited: Server, clock: Clock) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(BURST * 3):
            answer = await health.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_limiter_fails_open_when_redis_is_gone(
    limited: Server, qr: Clients, identity: grpc.aio.Channel, clock: Clock, tmp_path: Path
) -> None:
    binary = server_binary()
    assert binary is not None, "no redis-server or valkey-server binary"
    own = RedisProcess(binary, tmp_path / "redis")
    own.start()
    limiter = limited.rate_limiter
    assert limiter is not None
    shared = limiter.client
    client = redis.Redis.from_url(own.url, socket_connect_timeout=1)
    limiter.client = client
    limiter.backoff = 3600.0  # "left alone for a moment" must outlast the test's next call, however slow
    try:
        account = await sign_up(identity, "outage")
        for _ in range(BURST):
            await list_codes(qr, account)
        with pytest.raises(grpc.aio.AioRpcError):
            await list_codes(qr, account)  # the limiter works on this Redis
        own.kill()
        before = failures(QR_SERVICE, "redis")
        _, headers = await list_codes(qr, account)  # allowed: Redis cannot say no
        assert "x-ratelimit-remaining" not in headers
        assert failures(QR_SERVICE, "redis") == before + 1
        # Redis is left alone for a moment: no timeout on every call meanwhile.
        await list_codes(qr, account)
        assert failures(QR_SERVICE, "redis") == before + 1

        # A Redis that hangs (keeps its socket, answers nothing) is waited for only briefly.
        own.start()
        await client.aclose()
        client = redis.Redis.from_url(own.url, socket_connect_timeout=1)
        limiter.client = client
        assert await client.ping()
        own.freeze()
        _, headers = await list_codes(qr, account)
        assert "x-ratelimit-remaining" not in headers
        assert failures(QR_SERVICE, "redis") == before + 2
    finally:
        limiter.client = shared
        limiter.backoff = 1.0
        own.kill()
        await client.aclose()


class GenerousToPro:
    """A plan policy as billing provides it: a rate per organization, unlimited for some."""

    def __init__(self) -> None:
        self.unlimited: set[str] = set()
        self.broken = False

    async def rate_for(self, principal: Principal, organization: str | None) -> Rate | None:
        if self.broken:
            raise RuntimeError("billing is down")
        if organization in self.unlimited:
            return None
        return Rate(per_second=1, burst=1)


@pytest.fixture(scope="module")
async def planned(settings: Settings) -> AsyncIterator[tuple[Server, GenerousToPro]]:
    policy = GenerousToPro()
    spec = dataclasses.replace(SETTINGS_ONLY, rate_policy=lambda resources: policy)
    server, _ = await create_server(settings, spec)
    limiter = server.rate_limiter
    assert limiter is not None
    limiter.prefix = f"qrmesh:ratelimit:test-{secrets.token_hex(4)}:"
    limiter.clock = Clock()
    await server.start()
    yield server, policy
    await server.stop(0)
    async with redis.Redis.from_url(settings.redis_url) as client:
        await forget(client, limiter.prefix)


async def test_a_service_spec_plugs_in_its_own_rate_policy(
    planned: tuple[Server, GenerousToPro], identity: grpc.aio.Channel
) -> None:
    server, policy = planned
    free, pro = await sign_up(identity, "free"), await sign_up(identity, "pro")
    policy.unlimited.add(pro.organization)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        qr = Clients.on(channel)
        await list_codes(qr, free)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await list_codes(qr, free)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(10):
            _, headers = await list_codes(qr, pro)
            assert "x-ratelimit-limit" not in headers  # unlimited: nothing to report
        # A policy that fails lets calls through rather than refusing everyone.
        policy.broken = True
        before = failures(QR_SERVICE, "policy")
        try:
            await list_codes(qr, free)
        finally:
            policy.broken = False
        assert failures(QR_SERVICE, "policy") == before + 1


# -- streams ---------------------------------------------------------------------------------------

ANALYTICS = analytics.DESCRIPTOR.services_by_name["AnalyticsService"].full_name


async def watch(request: analytics.WatchScansRequest, context: Any) -> AsyncIterator[analytics.WatchScansResponse]:
    for _ in range(2):
        yield analytics.WatchScansResponse()


async def export(requests: AsyncIterator[analytics.ExportScansRequest], context: Any) -> AsyncIterator[Any]:
    async for _ in requests:  # a client stream, to see it charged once and not per message
        yield httpbody_pb2.HttpBody(content_type="text/csv", data=b"x")


def register_streams(server: grpc.aio.Server, resources: Resources) -> Sequence[str]:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "WatchScans": grpc.unary_stream_rpc_method_handler(
            watch, analytics.WatchScansRequest.FromString, analytics.WatchScansResponse.SerializeToString
        ),
        "ExportScans": grpc.stream_stream_rpc_method_handler(
            export, analytics.ExportScansRequest.FromString, httpbody_pb2.HttpBody.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(ANALYTICS, handlers)])
    return [ANALYTICS]


@pytest.fixture(scope="module")
async def streams(settings: Settings) -> AsyncIterator[Server]:
    """A guarded stand-in for the analytics service's streaming RPCs, with tiny rates."""
    spec = ServiceSpec(name="streams", register=register_streams, uses_database=False, access=remote_access)
    server, _ = await create_server(tiny(settings), spec)
    limiter = server.rate_limiter
    assert limiter is not None
    limiter.prefix = f"qrmesh:ratelimit:test-{secrets.token_hex(4)}:"
    limiter.clock = Clock()
    await server.start()
    yield server
    await server.stop(0)
    async with redis.Redis.from_url(settings.redis_url) as client:
        await forget(client, limiter.prefix)


async def test_streams_are_charged_once_per_call(streams: Server, identity: grpc.aio.Channel) -> None:
    account = await sign_up(identity, "streams")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{streams.port}") as channel:
        watch_scans = channel.unary_stream(
            f"/{ANALYTICS}/WatchScans",
            request_serializer=analytics.WatchScansRequest.SerializeToString,
            response_deserializer=analytics.WatchScansResponse.FromString,
        )
        export_scans = channel.stream_stream(
            f"/{ANALYTICS}/ExportScans",
            request_serializer=analytics.ExportScansRequest.SerializeToString,
            response_deserializer=httpbody_pb2.HttpBody.FromString,
        )
        call = watch_scans(analytics.WatchScansRequest(parent=account.organization), metadata=account.metadata())
        assert len([item async for item in call]) == 2
        assert dict(await call.initial_metadata() or ())["x-ratelimit-remaining"] == "2"

        async def five() -> AsyncIterator[analytics.ExportScansRequest]:
            for _ in range(5):
                yield analytics.ExportScansRequest(parent=account.organization)

        for left in ("1", "0"):
            chunks = export_scans(five(), metadata=account.metadata())
            assert len([item async for item in chunks]) == 5
            assert dict(await chunks.initial_metadata() or ())["x-ratelimit-remaining"] == left

        refused = watch_scans(analytics.WatchScansRequest(parent=account.organization), metadata=account.metadata())
        with pytest.raises(grpc.aio.AioRpcError) as error:
            [item async for item in refused]
        assert_rate_limited(error.value, "user", 1)
        # (One message: a client still writing when the server ends the call sees its own INTERNAL.)
        refused_export = export_scans(
            iter([analytics.ExportScansRequest(parent=account.organization)]), metadata=account.metadata()
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            [item async for item in refused_export]
        assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited_count(ANALYTICS, "user") >= 2
