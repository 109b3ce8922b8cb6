"""Rendering: every format of a spread of designs decodes (two decoders) to exactly what went in."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage

from qrmesh.platform.errors import FailedPrecondition, InvalidArgument
from qrmesh.qr.domain.design import (
    Color,
    Design,
    ErrorCorrection,
    EyeBallShape,
    EyeFrameShape,
    Frame,
    FrameStyle,
    Gradient,
    GradientType,
    Logo,
    ModuleShape,
    parse_color,
)
from qrmesh.qr.domain.render import Format, RenderOptions, encode, layout, rasterize, render
from tests.imaging import decode_opencv, decode_zxing, eps_to_svg, to_pixels

URL = "https://example.com/campaign/spring?utm_source=poster"


def png_logo(width: int = 120, height: int = 80, color: tuple[int, int, int, int] = (200, 30, 30, 255)) -> bytes:
    """A small PNG logo."""
    image = PILImage.new("RGBA", (width, height), color)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


NAVY = parse_color("#1a237e", "foreground")
RED = parse_color("#c62828", "eyeFrame.color")
GRADIENT = Gradient(GradientType.LINEAR, 45.0, ((0.0, NAVY), (0.5, parse_color("#4a148c", "g")), (1.0, RED)))

DESIGNS = {
    "plain": Design(),
    "transparent": Design(background=None),
    "colors": Design(foreground=NAVY, background=parse_color("#fff8e1", "background")),
    "linear-gradient": Design(gradient=GRADIENT, module_shape=ModuleShape.ROUNDED),
    "radial-gradient": Design(
        gradient=Gradient(GradientType.RADIAL, 0.0, ((0.2, parse_color("#000", "g")), (1.0, NAVY))),
        background=None,
    ),
    "styled": Design(
        foreground=NAVY,
        module_shape=ModuleShape.EXTRA_ROUNDED,
        eye_frame_shape=EyeFrameShape.ROUNDED,
        eye_frame_color=RED,
        eye_ball_shape=EyeBallShape.CIRCLE,
        logo=Logo(png_logo(), size_ratio=0.22, margin=1, clear_behind=True),
        frame=Frame(FrameStyle.ROUNDED_BOX, "SCAN ME"),
    ),
    "logo-over": Design(logo=Logo(png_logo(64, 64, (20, 120, 200, 180)), size_ratio=0.2)),
    "banner-bottom": Design(frame=Frame(FrameStyle.BANNER_BOTTOM, "Scan for the menu", color=NAVY)),
    "banner-top": Design(frame=Frame(FrameStyle.BANNER_TOP, "ÜBER UNS", text_color=parse_color("#ffd54f", "t"))),
    "box": Design(background=None, frame=Frame(FrameStyle.BOX, "SCAN ME")),
    **{f"module-{shape.name.lower()}": Design(module_shape=shape) for shape in ModuleShape},
    **{
        f"eyes-{frame.name.lower()}-{ball.name.lower()}": Design(eye_frame_shape=frame, eye_ball_shape=ball)
        for frame, ball in zip(EyeFrameShape, [*EyeBallShape], strict=True)
    },
}


# OpenCV's detectors only find four-cornered finder patterns; these eye frames are for phone scanners.
ROUND_EYES = (EyeFrameShape.EXTRA_ROUNDED, EyeFrameShape.CIRCLE)


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name)
@pytest.mark.parametrize("name", list(DESIGNS))
def test_every_design_and_format_decodes_with_two_decoders(name: str, fmt: Format) -> None:
    design = DESIGNS[name]
    image = render(URL, design, RenderOptions(format=fmt, size=512))
    assert image.content_type == fmt.value
    pixels = to_pixels(image.data, fmt)
    assert decode_zxing(pixels) == [URL]
    if design.eye_frame_shape not in ROUND_EYES:
        assert decode_opencv(pixels) == [URL]


@pytest.mark.parametrize("shape", ROUND_EYES, ids=lambda s: s.name)
def test_round_eye_frames_are_invisible_to_opencv_but_read_by_zxing(shape: EyeFrameShape) -> None:
    pixels = to_pixels(render(URL, Design(eye_frame_shape=shape), RenderOptions()).data, Format.PNG)
    assert decode_zxing(pixels) == [URL]
    assert decode_opencv(pixels) == []  # if OpenCV learns them, fold this design into the two-decoder test


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name)
def test_unicode_round_trips(fmt: Format) -> None:
    text = "Grüße aus Malmö — 二维码 ✓"
    pixels = to_pixels(render(text, Design(), RenderOptions(format=fmt)).data, fmt)
    assert decode_zxing(pixels) == [text]
    assert decode_opencv(pixels) == [text]


@pytest.mark.parametrize(
    ("level", "capacity"),
    [(ErrorCorrection.L, 2953), (ErrorCorrection.M, 2331), (ErrorCorrection.Q, 1663), (ErrorCorrection.H, 1273)],
)
def test_maximum_capacity_text_is_version_40_and_decodes(level: ErrorCorrection, capacity: int) -> None:
    # Lowercase letters force byte mode; a shortfall of a few bytes leaves room for the mode header.
    text = ("abcdefghijklmnopqrstuvwxyz" * 200)[: capacity - 2]
    image = render(text, Design(error_correction=level), RenderOptions(size=2048))
    assert image.symbol.version == 40
    assert image.symbol.error_correction is level
    assert decode_zxing(to_pixels(image.data, Format.PNG)) == [text]


def test_error_correction_is_exactly_the_level_asked_for() -> None:
    for level in ErrorCorrection:
        image = render("HELLO", Design(error_correction=level), RenderOptions())
        assert image.symbol.error_correction is level
        assert image.symbol.version == 1


def test_a_logo_raises_error_correction_to_q_but_never_lowers_it() -> None:
    logo = Logo(png_logo())
    assert render(URL, Design(logo=logo), RenderOptions()).symbol.error_correction is ErrorCorrection.Q
    assert (
        render(URL, Design(logo=logo, error_correction=ErrorCorrection.H), RenderOptions()).symbol.error_correction
        is ErrorCorrection.H
    )
    assert render(URL, Design(), RenderOptions()).symbol.error_correction is ErrorCorrection.M


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name)
@pytest.mark.parametrize("name", ["plain", "styled", "linear-gradient", "transparent"])
def test_rendering_is_deterministic(name: str, fmt: Format) -> None:
    first = render(URL, DESIGNS[name], RenderOptions(format=fmt))
    second = render(URL, DESIGNS[name], RenderOptions(format=fmt))
    assert first.data == second.data
    assert first.etag == second.etag
    assert re.fullmatch(r"[0-9a-f]{64}", first.etag)


def test_different_content_gets_a_different_etag() -> None:
    assert render("a", Design(), RenderOptions()).etag != render("b", Design(), RenderOptions()).etag


def test_png_fits_the_size_with_whole_pixel_modules() -> None:
    image = render(URL, Design(), RenderOptions(size=300))
    modules = image.symbol.size + 8
    width, height = PILImage.open(io.BytesIO(image.data)).size
    assert (width, height) == (image.width, image.height)
    assert width % modules == 0
    assert 300 - modules < width <= 300


def test_quiet_zone_is_drawn_light() -> None:
    design = Design(quiet_zone=6)
    image = render(URL, design, RenderOptions(size=400))
    pixels = np.asarray(PILImage.open(io.BytesIO(image.data)).convert("L"))
    scale = image.width // (image.symbol.size + 12)
    border = 6 * scale
    assert pixels[:border].min() == 255
    assert pixels[:, :border].min() == 255
    assert pixels[border, border] == 0  # the top-left finder starts right after it


def test_physical_size_sets_pixels_from_dpi() -> None:
    image = render(URL, Design(), RenderOptions(physical_size_mm=50, dpi=300))
    target = round(50 / 25.4 * 300)
    assert target - (image.symbol.size + 8) < image.width <= target


@pytest.mark.parametrize("fmt", [Format.PNG, Format.JPEG, Format.WEBP], ids=lambda f: f.name)
def test_raster_formats_carry_the_dpi(fmt: Format) -> None:
    image = render(URL, Design(), RenderOptions(format=fmt, dpi=600))
    if fmt is Format.WEBP:
        exif = PILImage.open(io.BytesIO(image.data)).getexif()
        assert float(exif[0x011A]) == 600
        assert exif[0x0128] == 2
    else:
        dpi = PILImage.open(io.BytesIO(image.data)).info["dpi"]
        assert [round(float(v)) for v in dpi] == [600, 600]


def test_plain_png_fast_path_matches_the_general_rasterizer() -> None:
    for design in (Design(), Design(background=None), Design(foreground=NAVY, background=RED)):
        laid_out = layout(URL, design, RenderOptions())
        fast = PILImage.open(io.BytesIO(encode(laid_out, design, RenderOptions()))).convert("RGBA")
        general = rasterize(laid_out)
        assert np.array_equal(np.asarray(fast), np.asarray(general))


def test_png_has_no_timestamps_or_text_chunks() -> None:
    data = render(URL, DESIGNS["styled"], RenderOptions()).data
    chunks = []
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    assert chunks[0] == b"IHDR"
    assert chunks[-1] == b"IEND"
    assert not {b"tIME", b"tEXt", b"iTXt", b"zTXt"} & set(chunks)


def test_transparent_background_is_transparent_in_png_webp_svg_and_pdf() -> None:
    design = Design(background=None)
    for fmt in (Format.PNG, Format.WEBP):
        pixels = PILImage.open(io.BytesIO(render(URL, design, RenderOptions(format=fmt)).data)).convert("RGBA")
        assert np.asarray(pixels)[0, 0, 3] == 0
    svg = render(URL, design, RenderOptions(format=Format.SVG)).data
    assert b"<rect" not in svg
    pdf = render(URL, design, RenderOptions(format=Format.PDF)).data
    assert b" re\nf*" not in zlib.decompress(_pdf_stream(pdf)).split(b"cm", 1)[1][:40]


def test_jpeg_flattens_a_transparent_background_on_white() -> None:
    image = render(URL, Design(background=None), RenderOptions(format=Format.JPEG))
    pixels = PILImage.open(io.BytesIO(image.data))
    assert pixels.mode == "RGB"
    assert min(pixels.getpixel((1, 1))) > 245  # type: ignore[arg-type]


def _pdf_stream(pdf: bytes) -> bytes:
    match = re.search(rb"4 0 obj\n<< /Length (\d+) /Filter /FlateDecode >>\nstream\n", pdf)
    assert match is not None
    return pdf[match.end() : match.end() + int(match.group(1))]


def test_vector_formats_are_paths_not_embedded_bitmaps() -> None:
    svg = render(URL, Design(module_shape=ModuleShape.DOTS), RenderOptions(format=Format.SVG)).data
    assert b"<image" not in svg
    assert svg.count(b"<path") >= 2
    assert b"C" in svg.split(b' d="', 2)[1]  # dots are curves
    pdf = render(URL, Design(), RenderOptions(format=Format.PDF)).data
    assert b"/XObject <<  >>" in pdf
    content = zlib.decompress(_pdf_stream(pdf))
    assert b" re" in content
    assert b"f*" in content
    eps = render(URL, Design(), RenderOptions(format=Format.EPS)).data
    assert eps.startswith(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    assert b" image" not in eps
    # A logo is the only image; the modules stay paths.
    styled_svg = render(URL, DESIGNS["styled"], RenderOptions(format=Format.SVG)).data
    assert styled_svg.count(b"<image") == 1


def test_svg_text_is_glyph_outlines_not_a_font() -> None:
    svg = render(URL, DESIGNS["banner-bottom"], RenderOptions(format=Format.SVG)).data
    assert b"<text" not in svg
    assert b"font" not in svg.lower()


def test_pdf_cross_reference_offsets_point_at_their_objects() -> None:
    pdf = render(URL, DESIGNS["styled"], RenderOptions(format=Format.PDF)).data
    startxref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n", 1)[0])
    assert pdf[startxref:].startswith(b"xref\n")
    table = pdf[startxref:].split(b"\n")
    count = int(table[1].split()[1])
    for number in range(1, count):
        offset = int(table[2 + number][:10])
        assert pdf[offset:].startswith(f"{number} 0 obj\n".encode())
    assert b"/CreationDate" not in pdf
    assert b"/Producer" not in pdf


def test_eps_bounding_box_and_structure() -> None:
    eps = render(URL, DESIGNS["linear-gradient"], RenderOptions(format=Format.EPS, dpi=300)).data.decode()
    image = render(URL, DESIGNS["linear-gradient"], RenderOptions(format=Format.PNG, dpi=300))
    width_pt = image.width / 300 * 72
    match = re.search(r"%%HiResBoundingBox: 0 0 (\S+) (\S+)", eps)
    assert match is not None
    assert float(match.group(1)) == pytest.approx(width_pt, abs=0.001)
    assert "shfill" in eps
    assert eps.rstrip().endswith("%%EOF")
    assert eps_to_svg(eps.encode()).startswith(b"<svg")


def test_gradient_colors_reach_the_pixels() -> None:
    design = Design(gradient=Gradient(GradientType.LINEAR, 0.0, ((0.0, Color(255, 0, 0)), (1.0, Color(0, 0, 255)))))
    image = render(URL, design, RenderOptions(format=Format.PNG))
    pixels = np.asarray(PILImage.open(io.BytesIO(image.data)).convert("RGB")).astype(int)
    dark = pixels.sum(axis=2) < 600
    left = pixels[:, : image.width // 3][dark[:, : image.width // 3]]
    right = pixels[:, 2 * image.width // 3 :][dark[:, 2 * image.width // 3 :]]
    assert left[:, 0].mean() > left[:, 2].mean()  # red on the left
    assert right[:, 2].mean() > right[:, 0].mean()  # blue on the right


@pytest.mark.parametrize("size", [1, 63, 4097])
def test_size_outside_limits_is_refused(size: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        render("x", Design(), RenderOptions(size=size))
    assert caught.value.violations[0].field == "size"


def test_physical_size_outside_limits_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        render("x", Design(), RenderOptions(physical_size_mm=2000, dpi=2400))
    assert caught.value.violations[0].field == "physicalSizeMm"


def test_content_too_long_names_bytes_and_capacity() -> None:
    with pytest.raises(InvalidArgument) as caught:
        render("x" * 3000, Design(error_correction=ErrorCorrection.H), RenderOptions())
    assert caught.value.reason == "CONTENT_TOO_LONG"
    assert caught.value.violations[0].field == "content"
    assert "3000 bytes" in caught.value.message
    assert "1273 bytes" in caught.value.message


def test_strict_refuses_low_contrast_and_inverted_colors() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        render(URL, Design(foreground=parse_color("#ccc", "f")), RenderOptions(), strict=True)
    assert caught.value.reason == "LOW_CONTRAST"
    with pytest.raises(FailedPrecondition) as caught:
        render(URL, Design(foreground=Color(255, 255, 255), background=Color(0, 0, 0)), RenderOptions(), strict=True)
    assert caught.value.reason == "INVERTED_COLORS"
    # Without strict the same design renders.
    render(URL, Design(foreground=parse_color("#ccc", "f")), RenderOptions())


def test_strict_refuses_a_logo_over_the_error_budget() -> None:
    design = Design(logo=Logo(png_logo(100, 100), size_ratio=0.35, margin=4, clear_behind=True))
    with pytest.raises(FailedPrecondition) as caught:
        render(URL, design, RenderOptions(), strict=True)
    assert caught.value.reason == "LOGO_OVER_BUDGET"
