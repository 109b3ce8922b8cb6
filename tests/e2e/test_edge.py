"""Through a real Envoy: REST transcoding, native gRPC, JSON errors and /healthz."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from qrmesh.edge import Upstream
from qrmesh.platform.settings import Settings
from qrmesh.qr import server as qr_server_module
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc
from tests.conftest import ServiceProcess, running_edge, wait_healthz
from tests.imaging import decode_png

pytestmark = pytest.mark.e2e

RENDER = "/v1/qrCodes:render"


def post(edge: str, body: object) -> httpx.Response:
    return httpx.post(edge + RENDER, json=body, timeout=10)


def test_healthz_is_200_when_every_service_serves(edge: str) -> None:
    assert httpx.get(edge + "/healthz").status_code == 200


def test_rest_render_returns_a_png_that_decodes_to_the_url(edge: str) -> None:
    answer = post(edge, {"content": {"url": {"url": "https://example.com"}}, "format": "PNG"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert decode_png(answer.content) == ["https://example.com"]


def test_rest_render_svg_with_options(edge: str) -> None:
    body = {"content": {"text": {"text": "hello"}}, "format": "SVG", "size": 256, "errorCorrection": "HIGH"}
    answer = post(edge, body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/svg+xml"
    assert answer.content.startswith(b"<?xml")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": {"url": {"url": ""}}, "format": "PNG"}, "content.url.url"),
        ({"content": {"url": {"url": "javascript:alert(1)"}}, "format": "PNG"}, "content.url.url"),
        ({"content": {"url": {"url": "https://example.com"}}, "format": "GIF"}, "format"),
        ({"content": {}, "format": "PNG"}, "content"),
        ({"format": "PNG"}, "content"),
        ({"content": {"url": {"url": "https://example.com"}}, "size": 100000}, "size"),
        ({"content": {"url": {"url": "https://example.com"}}, "quietZone": -1}, "quietZone"),
    ],
)
def test_bad_input_is_400_json_naming_the_field(edge: str, body: object, field: str) -> None:
    answer = post(edge, body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()
    assert error["code"] == 3
    assert field in error["message"]
    infos = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert infos
    assert infos[0]["domain"] == "qrmesh.dev"


def test_violations_come_back_as_bad_request_details(edge: str) -> None:
    error = post(edge, {"content": {"url": {"url": "ftp://x"}}, "size": 9000}).json()
    bad = next(d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest"))
    assert {v["field"] for v in bad["fieldViolations"]} == {"content.url.url", "size"}


def test_malformed_json_is_a_json_400(edge: str) -> None:
    answer = httpx.post(edge + RENDER, content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["details"][0]["reason"] == "MALFORMED_REQUEST"


def test_unknown_route_is_a_json_404(edge: str) -> None:
    answer = httpx.get(edge + "/v1/nothing-here")
    assert answer.status_code == 404
    assert answer.json()["details"][0]["reason"] == "ROUTE_NOT_FOUND"


async def test_native_grpc_through_the_edge(edge: str) -> None:
    target = edge.removeprefix("http://")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = qr_code_service_pb2_grpc.QrCodeServiceStub(channel)
        request = qr_code_service_pb2.RenderQrCodeRequest(
            content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="https://example.com/grpc"))
        )
        body = await stub.RenderQrCode(request)
        assert decode_png(body.data) == ["https://example.com/grpc"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RenderQrCode(qr_code_service_pb2.RenderQrCodeRequest())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_healthz_turns_503_when_a_service_stops(settings: Settings, tmp_path: Path) -> None:
    service = ServiceProcess("qr", settings, tmp_path)
    try:
        upstream = Upstream("qr", "127.0.0.1", service.port, qr_server_module.GRPC_SERVICES)
        with running_edge([upstream], tmp_path) as (base_url, _):
            wait_healthz(base_url, 200)
            assert service.stop() == 0
            wait_healthz(base_url, 503)
            answer = httpx.post(base_url + RENDER, json={"content": {"text": {"text": "x"}}})
            assert answer.status_code == 503
            assert answer.json()["details"][0]["reason"] == "UNAVAILABLE"
    finally:
        service.stop()


def test_render_is_deterministic_with_an_etag(edge: str) -> None:
    body = {"content": {"url": {"url": "https://example.com/etag"}}, "design": {"moduleShape": "DOTS"}}
    first, second = post(edge, body), post(edge, body)
    assert first.status_code == 200, first.text
    assert first.content == second.content
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["etag"].startswith('"')
    assert "max-age" in first.headers["cache-control"]
    other = post(edge, {**body, "design": {"moduleShape": "ROUNDED"}})
    assert other.headers["etag"] != first.headers["etag"]


def test_wifi_and_vcard_render_through_rest(edge: str) -> None:
    wifi = {"wifi": {"ssid": "Café;Guest", "password": "s3cret,pass", "security": "WPA"}}
    answer = post(edge, {"content": wifi})
    assert answer.status_code == 200, answer.text
    assert decode_png(answer.content) == ["WIFI:T:WPA;S:Café\\;Guest;P:s3cret\\,pass;;"]
    vcard = {"vcard": {"firstName": "Zoë", "lastName": "Ångström", "phones": [{"number": "+46701234567"}]}}
    text = decode_png(post(edge, {"content": vcard}).content)[0]
    assert text.startswith("BEGIN:VCARD\r\nVERSION:3.0\r\n")
    assert "N:Ångström;Zoë;;;\r\n" in text


def test_check_reports_on_the_same_body(edge: str) -> None:
    body = {"content": {"url": {"url": "https://example.com"}}, "design": {"foreground": "#777777"}}
    answer = httpx.post(edge + "/v1/qrCodes:check", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["payload"] == "https://example.com"
    assert report["errorCorrection"] == "M"
    assert report["decoded"] is True
    assert report["modules"] == 4 * report["version"] + 17
    assert 4.0 < report["contrastRatio"] < 4.6
    assert [p["reason"] for p in report["problems"]] == []
    faint = httpx.post(edge + "/v1/qrCodes:check", json={**body, "design": {"foreground": "#BBBBBB"}}).json()
    assert "LOW_CONTRAST" in [p["reason"] for p in faint["problems"]]


def test_strict_render_refuses_a_poor_design(edge: str) -> None:
    body = {"content": {"text": {"text": "hi"}}, "design": {"foreground": "#FFFFFF", "background": "#000000"}}
    assert post(edge, body).status_code == 200
    answer = post(edge, {**body, "strict": True})
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["code"] == 9  # FAILED_PRECONDITION
    assert error["details"][0]["reason"] == "INVERTED_COLORS"


def test_bad_iban_is_a_400_naming_the_field(edge: str) -> None:
    epc = {"epc": {"name": "Someone", "iban": "DE00 1234 5678 9012 3456 78"}}
    error = post(edge, {"content": epc}).json()
    assert error["code"] == 3
    assert error["message"].startswith("content.epc.iban:")
    assert error["details"][0]["reason"] == "INVALID_IBAN"


def test_over_capacity_says_what_fits(edge: str) -> None:
    error = post(edge, {"content": {"text": {"text": "é" * 2000}}, "design": {"errorCorrection": "H"}}).json()
    assert error["details"][0]["reason"] == "CONTENT_TOO_LONG"
    assert "bytes" in error["message"]
