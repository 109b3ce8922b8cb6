"""Every payload kind x a spread of designs x every format, over real gRPC:
each image decodes, with two independent decoders, to exactly the payload the
check endpoint reports."""

from __future__ import annotations

import base64
import io
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from PIL import Image as PILImage

from qrmesh.platform.server import Server
from qrmesh.qr.v1 import qr_code_service_pb2, qr_code_service_pb2_grpc
from tests.imaging import decode_all

Request = qr_code_service_pb2.RenderQrCodeRequest


def logo_png() -> str:
    image = PILImage.new("RGB", (64, 64), (200, 30, 60))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


CONTENTS: dict[str, dict[str, Any]] = {
    "url": {"url": {"url": "https://example.com/spring?utm_source=poster&x=1"}},
    "text": {"text": {"text": "Grüße aus Malmö — 二维码 ✓"}},
    "email": {"email": {"to": "anna@example.com", "subject": "Hej & välkommen", "body": "Rad ett\nRad två"}},
    "phone": {"phone": {"number": "+46 (0)70-123 45 67"}},
    "sms": {"sms": {"number": "0046701234567", "message": "STOP: now, please"}},
    "wifi": {"wifi": {"ssid": 'Café;Guest,"5G":\\', "password": "pa;ss,wo:rd", "security": "WPA", "hidden": True}},
    "vcard": {
        "vcard": {
            "version": 4,
            "firstName": "Zoë",
            "lastName": "Ångström",
            "organization": "Qr; Mesh, AB",
            "title": "CTO",
            "phones": [{"number": "+46701234567", "type": "CELL"}],
            "emails": ["zoe@example.com"],
            "urls": ["https://example.com"],
            "address": {"street": "Storgatan 1", "city": "Malmö", "postalCode": "211 34", "country": "Sweden"},
            "note": "Line one\nLine two",
            "birthday": "1990-04-25",
        }
    },
    "mecard": {"mecard": {"name": "Doe,Jane", "phones": ["+15551234567"], "emails": ["jane@example.com"]}},
    "geo": {"geo": {"latitude": 55.605, "longitude": 13.0038, "altitude": 12}},
    "event": {
        "event": {
            "summary": "Launch; party, all welcome",
            "start": "2026-12-01T17:00:00Z",
            "end": "2026-12-01T20:00:00Z",
            "location": "Malmö",
            "timeZone": "Europe/Stockholm",
        }
    },
    "epc": {
        "epc": {
            "name": "Red Cross of Belgium",
            "iban": "BE72 0000 0000 1616",
            "bic": "BPOTBEB1",
            "amount": "12.50",
            "text": "Urgency fund",
        }
    },
    "swish": {
        "swish": {"payee": "1231181189", "amount": "100.50", "message": "Fika & bullar", "editable": {"amount": True}}
    },
    "bitcoin": {
        "bitcoin": {"address": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "amount": "0.0015", "label": "Luke Jr"}
    },
    "whatsapp": {"whatsapp": {"number": "+46 70 123 45 67", "message": "Hi! Is it open?"}},
}

DESIGNS: dict[str, dict[str, Any]] = {
    "plain": {},
    "styled": {
        "foreground": "#1A237E",
        "background": "#FFF8E1",
        "moduleShape": "ROUNDED",
        # quirc cannot sample symbols whose finder rings are rounded (zxing-cpp can):
        # rounded and circular eye frames are decoded in the unit tests.
        "eyeFrame": {"shape": "SQUARE", "color": "#B71C1C"},
        "eyeBall": {"shape": "CIRCLE"},
        "gradient": {
            "type": "LINEAR",
            "rotation": 45,
            "stops": [{"offset": 0, "color": "#0D47A1"}, {"offset": 1, "color": "#4A148C"}],
        },
    },
    "dots-logo": {"moduleShape": "DOTS", "logo": {"image": logo_png(), "sizeRatio": 0.18, "clearBehind": True}},
    "framed": {
        "moduleShape": "CLASSY",
        "background": "transparent",
        "frame": {"style": "BANNER_BOTTOM", "text": "SCAN ME", "color": "#004D40"},
        "quietZone": 2,
    },
}
FORMATS = ["PNG", "SVG", "PDF", "EPS", "JPEG", "WEBP"]


def request_for(content: dict[str, Any], design: dict[str, Any], fmt: str) -> qr_code_service_pb2.RenderQrCodeRequest:
    body = {"content": content, "design": design, "format": fmt, "size": 480}
    return json_format.ParseDict(body, Request())


@pytest.mark.parametrize("kind", sorted(CONTENTS))
async def test_every_kind_design_and_format_decodes(kind: str, qr_server: Server, qr_channel: grpc.aio.Channel) -> None:
    stub = qr_code_service_pb2_grpc.QrCodeServiceStub(qr_channel)
    content = CONTENTS[kind]
    for design_name, design in DESIGNS.items():
        if kind == "epc" and "logo" in design:
            continue  # EPC is fixed at error correction M: no logo budget (tested elsewhere)
        report = await stub.CheckQrCode(
            qr_code_service_pb2.CheckQrCodeRequest(render=request_for(content, design, "PNG"))
        )
        assert report.decoded, (kind, design_name, list(report.problems))
        for fmt in FORMATS:
            body = await stub.RenderQrCode(request_for(content, design, fmt))
            decoded = decode_all(body.data, body.content_type)
            for decoder, texts in decoded.items():
                assert texts == [report.payload], (kind, design_name, fmt, decoder, texts)
