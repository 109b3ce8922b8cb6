"""The edge as a front door: docs, compression, CORS, gRPC-Web, size and rate limits."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import pytest

from qrmesh.edge import Upstream
from qrmesh.platform.settings import Settings
from qrmesh.qr import server as qr_server_module
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2
from tests.conftest import ServiceProcess, running_edge, wait_healthz
from tests.imaging import decode_png

pytestmark = pytest.mark.e2e

RENDER = "/v1/qrCodes:render"


def test_docs_page_and_its_assets_are_served_without_a_cdn(edge: str) -> None:
    page = httpx.get(f"{edge}/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.split("<body>", 1)[1]  # every asset comes from the edge itself
    for asset, kind in [
        ("/docs/swagger-ui-bundle.js", "application/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs/init.js", "application/javascript"),
    ]:
        answer = httpx.get(edge + asset)
        assert answer.status_code == 200, asset
        assert answer.headers["content-type"] == kind
    assert "/openapi.json" in httpx.get(f"{edge}/docs/init.js").text


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_json_and_svg_are_compressed(edge: str, encoding: str) -> None:
    headers = {"accept-encoding": encoding}
    svg = httpx.post(
        edge + RENDER, json={"content": {"text": {"text": "compress me"}}, "format": "SVG"}, headers=headers
    )
    assert svg.status_code == 200
    assert svg.headers["content-encoding"] == encoding
    plain = httpx.post(edge + RENDER, json={"content": {"text": {"text": "compress me"}}, "format": "SVG"})
    assert svg.num_bytes_downloaded < len(plain.content) / 2
    png = httpx.post(edge + RENDER, json={"content": {"text": {"text": "raw"}}}, headers=headers)
    assert "content-encoding" not in png.headers  # images are compressed already


def test_cors_preflight_allows_local_origins_only(edge: str) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type,x-api-key"}
    allowed = httpx.options(edge + RENDER, headers={"origin": "http://localhost:3000", **preflight})
    assert allowed.headers.get("access-control-allow-origin") == "http://localhost:3000"
    assert "x-api-key" in allowed.headers.get("access-control-allow-headers", "")
    denied = httpx.options(edge + RENDER, headers={"origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in denied.headers


def test_grpc_web_calls_reach_the_service(edge: str) -> None:
    request = qr_code_service_pb2.RenderQrCodeRequest(
        content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="https://example.com/web"))
    ).SerializeToString()
    answer = httpx.post(
        f"{edge}/qrmesh.qr.v1.QrCodeService/RenderQrCode",
        content=b"\x00" + struct.pack(">I", len(request)) + request,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    assert answer.status_code == 200
    body, frames = answer.content, []
    while body:
        flag, length = body[0], struct.unpack(">I", body[1:5])[0]
        frames.append((flag, body[5 : 5 + length]))
        body = body[5 + length :]
    data = b"".join(payload for flag, payload in frames if flag == 0)
    trailers = b"".join(payload for flag, payload in frames if flag & 0x80)
    assert b"grpc-status:0" in trailers.replace(b" ", b"")
    from google.api import httpbody_pb2

    assert decode_png(httpbody_pb2.HttpBody.FromString(data).data) == ["https://example.com/web"]


def test_oversized_requests_are_refused_with_json(edge: str) -> None:
    huge = {"content": {"text": {"text": "x"}}, "design": {"logo": {"image": "A" * (5 * 1024 * 1024)}}}
    answer = httpx.post(edge + RENDER, json=huge, timeout=30)
    assert answer.status_code == 413
    assert answer.json()["details"][0]["reason"] == "REQUEST_TOO_LARGE"


def test_local_rate_limit_answers_429(settings: Settings, tmp_path: Path) -> None:
    service = ServiceProcess("qr", settings, tmp_path)
    try:
        upstream = Upstream("qr", "127.0.0.1", service.port, qr_server_module.GRPC_SERVICES)
        with running_edge([upstream], tmp_path, requests_per_second=1, burst=3) as (base_url, _):
            wait_healthz(base_url, 200)
            body = {"content": {"text": {"text": "x"}}}
            answers = [httpx.post(base_url + RENDER, json=body) for _ in range(6)]
    finally:
        service.stop()
    codes = [answer.status_code for answer in answers]
    assert codes[0] == 200
    limited = [answer for answer in answers if answer.status_code == 429]
    assert limited
    assert limited[0].json()["details"][0]["reason"] == "RATE_LIMITED"
