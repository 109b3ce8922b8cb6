"""The scannability report: facts about the symbol, and each problem reported when (and only when) it occurs."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from qrmesh.qr.domain.design import (
    Color,
    Design,
    ErrorCorrection,
    Gradient,
    GradientType,
    Logo,
    ModuleShape,
    parse_color,
)
from qrmesh.qr.domain.render import Format, RenderOptions
from qrmesh.qr.domain.report import check

URL = "https://example.com/campaign/spring?utm_source=poster"


def logo(size: int = 100) -> bytes:
    """A square PNG logo."""
    out = io.BytesIO()
    PILImage.new("RGB", (size, size), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def reasons(report_problems: list[tuple[str, str]]) -> list[str]:
    """Just the reasons."""
    return [reason for reason, _ in report_problems]


def test_a_plain_code_has_no_problems_and_decodes() -> None:
    report = check(URL, Design(), RenderOptions())
    assert report.problems == []
    assert report.decoded
    assert report.payload == URL
    assert report.payload_bytes == len(URL)
    assert report.error_correction is ErrorCorrection.M
    assert report.modules == report.version * 4 + 17
    assert report.contrast_ratio == pytest.approx(21.0)
    assert report.logo_coverage == 0
    assert report.error_budget == 0.15
    assert report.image_size == (report.modules + 8) * (512 // (report.modules + 8))


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name)
def test_every_format_is_checked_at_its_delivered_resolution(fmt: Format) -> None:
    report = check(URL, Design(module_shape=ModuleShape.DOTS), RenderOptions(format=fmt, size=300))
    assert report.decoded
    assert report.image_size <= 300


def test_low_contrast_is_reported() -> None:
    report = check(URL, Design(foreground=parse_color("#aaaaaa", "f")), RenderOptions())
    assert "LOW_CONTRAST" in reasons(report.problems)
    assert report.contrast_ratio < 4


def test_the_lowest_contrast_counts_gradient_stops_and_eyes() -> None:
    gradient = Gradient(GradientType.LINEAR, 0, ((0.0, Color(0, 0, 0)), (1.0, parse_color("#bbbbbb", "g"))))
    assert check(URL, Design(gradient=gradient), RenderOptions()).contrast_ratio < 2.5
    eyes = Design(eye_ball_color=parse_color("#cccccc", "e"))
    assert "LOW_CONTRAST" in reasons(check(URL, eyes, RenderOptions()).problems)


def test_inverted_colors_are_reported() -> None:
    report = check(URL, Design(foreground=Color(255, 255, 255), background=Color(0, 0, 0)), RenderOptions())
    assert "INVERTED_COLORS" in reasons(report.problems)
    assert "LOW_CONTRAST" not in reasons(report.problems)


def test_transparent_background_counts_as_white() -> None:
    report = check(URL, Design(background=None), RenderOptions())
    assert report.contrast_ratio == pytest.approx(21.0)
    assert report.decoded
    assert report.problems == []


def test_logo_within_budget_is_fine_and_over_budget_is_reported() -> None:
    small = check(URL, Design(logo=Logo(logo(), size_ratio=0.15)), RenderOptions())
    assert small.error_correction is ErrorCorrection.Q
    assert 0 < small.logo_coverage < 0.25 * 0.8
    assert small.problems == []
    assert small.decoded
    big = check(URL, Design(logo=Logo(logo(), size_ratio=0.35, margin=4, clear_behind=True)), RenderOptions())
    assert big.logo_coverage > 0.25 * 0.8
    assert "LOGO_OVER_BUDGET" in reasons(big.problems)


def test_logo_at_the_edge_of_the_budget_still_decodes() -> None:
    # The largest logo that stays within H's budget with its safety margin.
    for ratio in (0.35, 0.3, 0.25, 0.2):
        report = check(
            URL, Design(logo=Logo(logo(), size_ratio=ratio), error_correction=ErrorCorrection.H), RenderOptions()
        )
        if "LOGO_OVER_BUDGET" not in reasons(report.problems):
            break
    assert report.logo_coverage > 0.15
    assert report.decoded


def test_a_destroyed_code_fails_to_decode() -> None:
    # A logo far beyond what L can restore, with nothing left behind it.
    design = Design(logo=Logo(logo(), size_ratio=0.35, margin=4, clear_behind=True), error_correction=ErrorCorrection.H)
    report = check("x" * 30, design, RenderOptions())
    assert "LOGO_OVER_BUDGET" in reasons(report.problems)
    assert not report.decoded
    assert "DECODE_FAILED" in reasons(report.problems)


def test_small_quiet_zone_is_reported() -> None:
    report = check(URL, Design(quiet_zone=1), RenderOptions())
    assert reasons(report.problems) == ["SMALL_QUIET_ZONE"]


def test_tiny_modules_are_reported_in_pixels_and_in_print() -> None:
    long_text = "a" * 1500  # a large version: 64 px leaves under 2 px per module
    assert "MODULES_TOO_SMALL" in reasons(
        check(long_text, Design(error_correction=ErrorCorrection.L), RenderOptions(size=64)).problems
    )
    printed = check(long_text, Design(error_correction=ErrorCorrection.L), RenderOptions(physical_size_mm=30, dpi=2400))
    assert "MODULES_TOO_SMALL" in reasons(printed.problems)
    fine = check(URL, Design(), RenderOptions(physical_size_mm=30, dpi=300))
    assert "MODULES_TOO_SMALL" not in reasons(fine.problems)
