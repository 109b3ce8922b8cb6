"""The scannability check: render a code exactly as delivered, decode it, and list what could go wrong."""

from __future__ import annotations

from dataclasses import dataclass

import zxingcpp

from qrmesh.qr.domain.checks import design_problems, logo_coverage, lowest_contrast
from qrmesh.qr.domain.design import Design, ErrorCorrection
from qrmesh.qr.domain.raster import flatten
from qrmesh.qr.domain.render import MM_PER_INCH, RenderOptions, layout, rasterize

STANDARD_QUIET_ZONE = 4
MIN_MODULE_PIXELS = 2
MIN_MODULE_MM = 0.25


@dataclass(frozen=True, slots=True)
class Report:
    """How well a code would scan; `problems` are (reason, message) pairs, empty when all is well."""

    payload: str
    payload_bytes: int
    version: int
    error_correction: ErrorCorrection
    modules: int
    contrast_ratio: float
    logo_coverage: float
    error_budget: float
    """The share of codewords the error correction restores (nominal: L 7%, M 15%, Q 25%, H 30%)."""
    decoded: bool
    problems: list[tuple[str, str]]
    image_size: int
    """The image's width and height in pixels (the larger one, with a frame)."""


def check(text: str, design: Design, options: RenderOptions) -> Report:
    """Lay out and draw the code as `render` would, decode the pixels with zxing-cpp, and report problems.

    Vector formats are checked through their raster equivalent at the same resolution (same scene,
    same scale).
    """
    laid_out = layout(text, design, options)
    symbol = laid_out.symbol
    problems = [(p.reason, p.message) for p in design_problems(symbol, design, laid_out.placement)]
    pixels = flatten(rasterize(laid_out))  # what a scanner sees: transparency over white paper
    decoded_texts = [
        r.text for r in zxingcpp.read_barcodes(pixels) if r.format == zxingcpp.BarcodeFormat.QRCode and r.valid
    ]
    decoded = decoded_texts == [text]
    if not decoded:
        found = f"read {decoded_texts[0]!r} instead" if decoded_texts else "found no code"
        problems.append(("DECODE_FAILED", f"a decoder {found} in the rendered image"))
    if design.quiet_zone < STANDARD_QUIET_ZONE:
        problems.append(
            (
                "SMALL_QUIET_ZONE",
                f"the quiet zone is {design.quiet_zone} modules; the standard asks for {STANDARD_QUIET_ZONE}",
            )
        )
    module_mm = laid_out.scale / options.dpi * MM_PER_INCH
    if laid_out.scale < MIN_MODULE_PIXELS:
        problems.append(
            ("MODULES_TOO_SMALL", f"modules are {laid_out.scale} pixel wide; use a larger size (at least 2 pixels)")
        )
    elif options.physical_size_mm is not None and module_mm < MIN_MODULE_MM:
        problems.append(
            (
                "MODULES_TOO_SMALL",
                f"modules print {module_mm:.2f} mm wide; at least {MIN_MODULE_MM} mm is needed, so print larger",
            )
        )
    return Report(
        payload=text,
        payload_bytes=symbol.payload_bytes,
        version=symbol.version,
        error_correction=symbol.error_correction,
        modules=symbol.size,
        contrast_ratio=round(lowest_contrast(design), 2),
        logo_coverage=round(logo_coverage(symbol, laid_out.placement), 4),
        error_budget=symbol.error_correction.restorable,
        decoded=decoded,
        problems=problems,
        image_size=max(laid_out.width, laid_out.height),
    )
