"""Rendering a QR symbol to PNG, SVG or PDF."""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass

import segno

from qrmesh.platform.errors import InvalidArgument

MIN_SIZE = 64
MAX_SIZE = 4096
DEFAULT_SIZE = 512
DEFAULT_QUIET_ZONE = 4


class Format(enum.Enum):
    """Image formats and their media types."""

    PNG = "image/png"
    SVG = "image/svg+xml"
    PDF = "application/pdf"


class ErrorCorrection(enum.Enum):
    """Error correction levels (segno's letters)."""

    LOW = "L"
    MEDIUM = "M"
    QUARTILE = "Q"
    HIGH = "H"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How to draw a symbol."""

    format: Format = Format.PNG
    size: int = DEFAULT_SIZE
    error_correction: ErrorCorrection = ErrorCorrection.MEDIUM
    quiet_zone: int = DEFAULT_QUIET_ZONE


@dataclass(frozen=True, slots=True)
class Image:
    """A rendered image: bytes and their media type."""

    data: bytes
    content_type: str
    modules: int
    """Modules per side, quiet zone included."""
    scale: int
    """Pixels (or user units) per module."""


def render(text: str, options: RenderOptions) -> Image:
    """Draw `text` as a QR symbol.

    Modules are drawn a whole number of pixels wide, so the image is the largest
    such size that fits in `options.size` (never below one pixel per module).
    The requested error correction is a minimum: it is raised for free when the
    symbol version does not change.
    """
    if not MIN_SIZE <= options.size <= MAX_SIZE:
        raise InvalidArgument.field("size", f"must be between {MIN_SIZE} and {MAX_SIZE} pixels (got {options.size})")
    try:
        symbol = segno.make(text, error=options.error_correction.value, micro=False)
    except segno.DataOverflowError:
        raise InvalidArgument.field(
            "content",
            f"is too long for a QR code at error correction {options.error_correction.name} "
            f"({len(text.encode())} bytes encoded)",
            reason="CONTENT_TOO_LONG",
        ) from None
    modules = int(symbol.symbol_size(scale=1, border=options.quiet_zone)[0])
    scale = max(1, options.size // modules)
    out = io.BytesIO()
    kind = options.format.name.lower()
    extra: dict[str, object] = {}
    if options.format is Format.SVG:
        extra = {"xmldecl": True, "svgns": True, "title": None, "unit": None}
    symbol.save(out, kind=kind, scale=scale, border=options.quiet_zone, **extra)
    return Image(data=out.getvalue(), content_type=options.format.value, modules=modules, scale=scale)
