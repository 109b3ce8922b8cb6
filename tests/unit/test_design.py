"""Design values, the symbol encoder, module shapes, logo intake and placement."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import zxingcpp
from PIL import Image as PILImage

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.domain.design import (
    BLACK,
    WHITE,
    Color,
    ErrorCorrection,
    Gradient,
    GradientType,
    ModuleShape,
    contrast_ratio,
    parse_color,
)
from qrmesh.qr.domain.geometry import coverage
from qrmesh.qr.domain.logo import MAX_BYTES, load_logo, sniff
from qrmesh.qr.domain.matrix import alignment_patterns, encode_symbol, function_mask, protected_mask
from qrmesh.qr.domain.raster import _modules_mask
from qrmesh.qr.domain.scene import Modules, cell_outline, module_outlines, place_logo


@pytest.mark.parametrize(
    ("text", "color"),
    [
        ("#000", Color(0, 0, 0)),
        ("#FfF", Color(255, 255, 255)),
        ("#1A2b3C", Color(0x1A, 0x2B, 0x3C)),
        ("#1a2b3c80", Color(0x1A, 0x2B, 0x3C, 0x80)),
    ],
)
def test_colors_parse(text: str, color: Color) -> None:
    assert parse_color(text, "design.foreground") == color


@pytest.mark.parametrize("text", ["", "000", "#12", "#12345", "#1234567", "#GGGGGG", "red", "rgb(0,0,0)", "#1234"])
def test_bad_colors_name_their_field(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_color(text, "design.eyeFrame.color")
    assert caught.value.reason == "INVALID_COLOR"
    assert caught.value.violations[0].field == "design.eyeFrame.color"
    assert caught.value.violations[0].description == "must be a color like #1A2B3C"


def test_contrast_follows_wcag() -> None:
    assert contrast_ratio(BLACK, WHITE) == pytest.approx(21.0)
    assert contrast_ratio(WHITE, WHITE) == pytest.approx(1.0)
    assert contrast_ratio(parse_color("#777", "f"), WHITE) == pytest.approx(4.48, abs=0.01)


def test_translucent_colors_composite_over_the_background() -> None:
    assert Color(0, 0, 0, 128).over(WHITE) == Color(127, 127, 127)


def test_gradient_interpolates_between_stops() -> None:
    gradient = Gradient(GradientType.LINEAR, 0, ((0.25, Color(0, 0, 0)), (0.75, Color(200, 100, 0))))
    assert gradient.color_at(0.0) == Color(0, 0, 0)
    assert gradient.color_at(0.5) == Color(100, 50, 0)
    assert gradient.color_at(1.0) == Color(200, 100, 0)


def test_error_correction_levels_order_and_budgets() -> None:
    assert ErrorCorrection.L < ErrorCorrection.M < ErrorCorrection.Q < ErrorCorrection.H
    assert [level.restorable for level in ErrorCorrection] == [0.07, 0.15, 0.25, 0.30]


# The encoder


def test_non_ascii_text_is_utf8_behind_an_eci() -> None:
    symbol = encode_symbol("Grüße", ErrorCorrection.L)
    pixels = np.pad(symbol.array(), 4).repeat(4, 0).repeat(4, 1)
    image = PILImage.fromarray(np.where(pixels, 0, 255).astype(np.uint8), "L")
    result = zxingcpp.read_barcodes(image, text_mode=zxingcpp.TextMode.HexECI)[0]
    # ]Q2 marks an ECI; \000026 is ECI 26 (UTF-8); then the UTF-8 bytes of the text.
    assert result.text.startswith("5D 51 32 5C 30 30 30 30 32 36 ")
    assert result.text.endswith("47 72 C3 BC C3 9F 65")
    assert symbol.payload_bytes == len("Grüße".encode())


def test_ascii_text_needs_no_eci() -> None:
    symbol = encode_symbol("HELLO WORLD", ErrorCorrection.Q)
    pixels = np.pad(symbol.array(), 4).repeat(4, 0).repeat(4, 1)
    image = PILImage.fromarray(np.where(pixels, 0, 255).astype(np.uint8), "L")
    assert zxingcpp.read_barcodes(image, text_mode=zxingcpp.TextMode.HexECI)[0].text.startswith("5D 51 31")


def test_empty_content_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        encode_symbol("", ErrorCorrection.M, field="content.text.text")


def test_overlong_digits_mention_digit_capacity() -> None:
    with pytest.raises(InvalidArgument) as caught:
        encode_symbol("1" * 7090, ErrorCorrection.L, field="content.text.text")
    assert caught.value.violations[0].field == "content.text.text"
    assert "7089 digits" in caught.value.message


@pytest.mark.parametrize("length", [20, 120, 400, 900, 1600, 2900])
def test_alignment_patterns_sit_where_the_encoder_put_them(length: int) -> None:
    symbol = encode_symbol("a" * length, ErrorCorrection.L)
    grid = symbol.array()
    expected = np.ones((5, 5), dtype=bool)
    expected[1:4, 1:4] = False
    expected[2, 2] = True
    patterns = alignment_patterns(symbol.version)
    assert len(patterns) == (0 if symbol.version == 1 else (symbol.version // 7 + 2) ** 2 - 3)
    for x, y in patterns:
        assert np.array_equal(grid[y - 2 : y + 3, x - 2 : x + 3], expected)
    mask = function_mask(symbol.version)
    assert mask[6].all()  # timing
    assert mask[:, 6].all()
    assert not mask[9:-9, 9:-9][~protected_mask(symbol.version)[9:-9, 9:-9]].any()


# Module shapes


@pytest.mark.parametrize("shape", list(ModuleShape), ids=lambda s: s.name)
def test_every_module_outline_stays_in_its_cell(shape: ModuleShape) -> None:
    for code in range(16):
        outline = cell_outline(shape, bool(code & 1), bool(code & 2), bool(code & 4), bool(code & 8))
        assert 0 <= outline.x0 < outline.x1 <= 1
        assert 0 <= outline.y0 < outline.y1 <= 1
        width, height = outline.x1 - outline.x0, outline.y1 - outline.y0
        tl, tr, br, bl = outline.radii
        assert max(tl + tr, br + bl) <= width + 1e-9
        assert max(tl + bl, tr + br) <= height + 1e-9
        # Every shape keeps most of its module dark, so the module reads as dark.
        assert width * height - sum(r * r * (1 - np.pi / 4) for r in outline.radii) >= 0.6


@pytest.mark.parametrize("shape", [ModuleShape.ROUNDED, ModuleShape.EXTRA_ROUNDED], ids=lambda s: s.name)
def test_connected_shapes_round_only_corners_no_neighbour_touches(shape: ModuleShape) -> None:
    assert all(cell_outline(shape, False, False, False, False).radii)
    assert not any(cell_outline(shape, True, True, True, True).radii)
    tl, tr, br, bl = cell_outline(shape, True, False, False, False).radii  # a neighbour above
    assert tl == tr == 0
    assert br > 0
    assert bl > 0


@pytest.mark.parametrize("shape", list(ModuleShape), ids=lambda s: s.name)
def test_vector_outlines_cover_exactly_what_raster_tiles_cover(shape: ModuleShape) -> None:
    grid = encode_symbol("https://example.com/vector", ErrorCorrection.M).array().copy()
    item = Modules(BLACK, grid, shape, 0.0, 0.0)
    scale = 8
    _, _, raster = _modules_mask(item, scale)
    drawn = np.zeros_like(raster, dtype=np.int32)
    for outline in module_outlines(item):
        left, top, cover = coverage(outline, scale)
        drawn[top : top + cover.shape[0], left : left + cover.shape[1]] += cover
    assert np.abs(drawn - raster.astype(np.int32)).max() <= 2


# Logos


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGBA", (width, height), (10, 20, 30, 255)).save(out, format="PNG")
    return out.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge size over a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP", "GIF"])
def test_logo_types_are_sniffed_and_decoded(kind: str) -> None:
    out = io.BytesIO()
    PILImage.new("RGB", (40, 30), (200, 10, 10)).save(out, format=kind)
    assert sniff(out.getvalue()) == kind
    assert load_logo(out.getvalue()).size == (40, 30)


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%PDF-1.7\n",
        _png_declaring(100_000, 100_000),
        _png_declaring(4097, 16),
        _png(16, 16)[:40],  # truncated
        b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_BYTES + 1),
    ],
    ids=["text", "svg", "pdf", "huge-declared", "just-over-4096", "truncated", "over-1-mib"],
)
def test_bad_logos_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        load_logo(data)
    assert caught.value.reason == "INVALID_LOGO"
    assert caught.value.violations[0].field == "design.logo.image"


@pytest.mark.parametrize("length", [10, 60, 150, 300, 700])
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.35])
def test_logo_never_covers_function_patterns(length: int, ratio: float) -> None:
    symbol = encode_symbol("a" * length, ErrorCorrection.Q)
    placement = place_logo(symbol, ratio, 4, 1.5)
    protected = protected_mask(symbol.version).copy()
    if placement.window is not None:  # the central alignment pattern shows through the logo
        x, y = placement.window
        protected[y - 3 : y + 4, x - 3 : x + 4] = False
    assert not (placement.covered & protected).any()
    x0, y0, x1, y1 = placement.box
    assert 0 < x1 - x0 <= ratio * symbol.size + 1e-9
    assert (x0 + x1) / 2 == pytest.approx(symbol.size / 2)
    assert (y0 + y1) / 2 == pytest.approx(symbol.size / 2)
