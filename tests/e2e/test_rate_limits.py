"""Rate limits through a real Envoy: REST callers over their limit get HTTP 429 with Retry-After,
gRPC callers RESOURCE_EXHAUSTED with a retry-after header, and callers under it see their budget."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import httpx
import pytest
import redis
import yaml

from qrmesh.edge import Upstream, render_config
from qrmesh.platform.interceptors import rich_status
from qrmesh.platform.ratelimit import KeyKind, address_bucket, bucket_key, user_identity
from qrmesh.platform.settings import Settings
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc
from tests.conftest import running_mesh

pytestmark = pytest.mark.e2e

PASSWORD = "a-long-and-unusual-passphrase-7"
BURST = 3
# One call every 100 s after the burst: nothing refills while a test runs.
TINY = {
    "QRMESH_RATE_ANONYMOUS_PER_SECOND": "0.01",
    "QRMESH_RATE_ANONYMOUS_BURST": str(BURST),
    "QRMESH_RATE_USER_PER_SECOND": "0.01",
    "QRMESH_RATE_USER_BURST": str(BURST),
}
RENDER = {"content": {"text": {"text": "hello"}}, "format": "SVG"}


@pytest.fixture(scope="module")
def limited_edge(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mesh of its own whose services allow 3 calls per caller, then one every 100 s."""
    with running_mesh(settings, tmp_path_factory.mktemp("limited"), env=TINY) as (base_url, _):
        yield base_url


@pytest.fixture
def buckets(settings: Settings) -> Iterator[list[str]]:
    """Bucket keys the test fills; deleted afterwards."""
    keys: list[str] = []
    yield keys
    client = redis.Redis.from_url(settings.redis_url)
    try:
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def fresh_ipv4() -> str:
    return f"203.0.113.{secrets.randbelow(254) + 1}"  # TEST-NET-3


def fresh_ipv6() -> str:
    return f"2001:db8:{secrets.randbelow(0xFFFF):x}:{secrets.randbelow(0xFFFF):x}::7"  # documentation prefix


def test_rest_over_the_limit_is_429_with_retry_after(limited_edge: str, buckets: list[str]) -> None:
    address = fresh_ipv4()
    buckets.append(bucket_key(KeyKind.ADDRESS, address_bucket(address)))
    headers = {"x-forwarded-for": address}  # the edge trusts one hop: the tests play the load balancer
    for left in range(BURST - 1, -1, -1):
        answer = httpx.post(f"{limited_edge}/v1/qrCodes:render", json=RENDER, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-ratelimit-limit"] == str(BURST)
        assert answer.headers["x-ratelimit-remaining"] == str(left)

    refused = httpx.post(f"{limited_edge}/v1/qrCodes:render", json=RENDER, headers=headers, timeout=10)
    assert refused.status_code == 429, refused.text
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 100
    assert refused.headers["x-ratelimit-remaining"] == "0"
    body = refused.json()
    assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = next(d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert info["reason"] == "RATE_LIMITED"
    assert info["metadata"] == {
        "limit": str(BURST),
        "per_second": "0.01",
        "retry_after_seconds": str(retry_after),
        "key_kind": "address",
    }
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in body["details"])

    # Another address has its own budget; a client cannot pick its address past the edge.
    other = httpx.post(
        f"{limited_edge}/v1/qrCodes:render",
        json=RENDER,
        headers={"x-forwarded-for": fresh_ipv4(), "x-qrmesh-client-ip": address},
        timeout=10,
    )
    buckets.append(bucket_key(KeyKind.ADDRESS, address_bucket(other.request.headers["x-forwarded-for"])))
    assert other.status_code == 200, other.text


def test_a_user_over_the_limit_is_429_and_other_users_are_not(limited_edge: str, buckets: list[str]) -> None:
    def account(label: str) -> tuple[str, dict[str, str]]:
        address = fresh_ipv6()  # sign-up and login are anonymous calls: a fresh address each
        buckets.append(bucket_key(KeyKind.ADDRESS, address_bucket(address)))
        email = f"{label}-{secrets.token_hex(4)}@example.com"
        forwarded = {"x-forwarded-for": address}
        body = {"email": email, "password": PASSWORD, "displayName": label}
        assert httpx.post(f"{limited_edge}/v1/auth:signUp", json=body, headers=forwarded).status_code == 200
        session = httpx.post(
            f"{limited_edge}/v1/auth:login", json={"email": email, "password": PASSWORD}, headers=forwarded
        ).json()
        user = session["user"]["name"]
        buckets.append(bucket_key(KeyKind.USER, user_identity(user)))
        return user, {"authorization": f"Bearer {session['accessToken']}"}

    _, headers = account("busy")
    # Calls naming no organization get the settings' rate (inside an organization its plan decides).
    for _ in range(BURST):
        assert httpx.get(f"{limited_edge}/v1/users/me", headers=headers).status_code == 200
    refused = httpx.get(f"{limited_edge}/v1/users/me", headers=headers)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["details"][0]["metadata"]["key_kind"] == "user"

    _, others = account("calm")
    assert httpx.get(f"{limited_edge}/v1/users/me", headers=others).status_code == 200


async def test_grpc_over_the_limit_is_resource_exhausted_with_retry_after(
    limited_edge: str, buckets: list[str]
) -> None:
    address = fresh_ipv6()
    buckets.append(bucket_key(KeyKind.ADDRESS, address_bucket(address)))
    request = qr_code_service_pb2.RenderQrCodeRequest(
        content=qr_code_pb2.Content(text=qr_code_pb2.TextPayload(text="hi")),
        format=qr_code_service_pb2.RenderQrCodeRequest.SVG,
    )
    metadata = (("x-forwarded-for", address),)
    async with grpc.aio.insecure_channel(limited_edge.removeprefix("http://")) as channel:
        stub = qr_code_service_pb2_grpc.QrCodeServiceStub(channel)
        for _ in range(BURST):
            await stub.RenderQrCode(request, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RenderQrCode(request, metadata=metadata)
    error = refused.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata() or ())
    assert int(str(trailers["retry-after"])) >= 1
    status = rich_status(error)
    assert status is not None
    assert len(status.details) == 2  # ErrorInfo, RetryInfo


def test_the_redirect_is_not_rate_limited_by_the_api_limits(limited_edge: str) -> None:
    # Scans are plain HTTP to the redirect; more than the API burst from one address all get answers.
    for _ in range(BURST * 2):
        answer = httpx.get(f"{limited_edge}/r/nosuchcode", headers={"x-forwarded-for": "203.0.113.250"})
        assert answer.status_code == 404


def test_the_chart_and_local_edges_set_the_client_address_for_every_route() -> None:
    # Rendered from the same template: the header is set on the virtual host, overwriting a client's.
    config = yaml.safe_load(render_config([Upstream("qr", "127.0.0.1", 1, [])], static=[]))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    host = manager["route_config"]["virtual_hosts"][0]
    assert host["request_headers_to_add"] == [
        {
            "header": {"key": "x-qrmesh-client-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
