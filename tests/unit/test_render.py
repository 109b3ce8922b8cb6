"""Rendering: images decode to what went in; bad sizes and overlong content are refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.domain.payloads import Text, Url, encode
from qrmesh.qr.domain.render import ErrorCorrection, Format, RenderOptions, render
from tests.qrdecode import decode_png


def test_url_payload_is_the_url() -> None:
    assert encode(Url("https://example.com/x?y=1")) == "https://example.com/x?y=1"


def test_png_decodes_to_the_text_and_fits_the_size() -> None:
    image = render("https://example.com", RenderOptions(size=300))
    assert image.content_type == "image/png"
    assert decode_png(image.data) == ["https://example.com"]
    width, height = PILImage.open(io.BytesIO(image.data)).size
    assert width == height == image.modules * image.scale
    assert width <= 300
    assert width > 300 - image.modules  # the largest whole-pixel scale that fits


def test_unicode_text_round_trips() -> None:
    text = "Grüße aus Malmö — 二维码"
    assert decode_png(render(encode(Text(text)), RenderOptions()).data) == [text]


def test_quiet_zone_changes_the_module_count() -> None:
    with_zone = render("abc", RenderOptions(quiet_zone=4))
    without = render("abc", RenderOptions(quiet_zone=0))
    assert with_zone.modules == without.modules + 8


def test_higher_error_correction_needs_a_bigger_symbol() -> None:
    text = "https://example.com/" + "x" * 60
    low = render(text, RenderOptions(error_correction=ErrorCorrection.LOW, quiet_zone=0))
    high = render(text, RenderOptions(error_correction=ErrorCorrection.HIGH, quiet_zone=0))
    assert high.modules > low.modules


def test_svg_and_pdf_are_vector_documents() -> None:
    svg = render("https://example.com", RenderOptions(format=Format.SVG))
    assert svg.content_type == "image/svg+xml"
    assert svg.data.startswith(b"<?xml")
    assert b"<svg" in svg.data
    assert b"<path" in svg.data
    pdf = render("https://example.com", RenderOptions(format=Format.PDF))
    assert pdf.content_type == "application/pdf"
    assert pdf.data.startswith(b"%PDF-")


@pytest.mark.parametrize("size", [1, 63, 4097])
def test_size_outside_limits_is_refused(size: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        render("x", RenderOptions(size=size))
    assert caught.value.violations[0].field == "size"


def test_content_too_long_for_a_symbol_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        render("x" * 3000, RenderOptions(error_correction=ErrorCorrection.HIGH))
    assert caught.value.reason == "CONTENT_TOO_LONG"
    assert caught.value.violations[0].field == "content"
