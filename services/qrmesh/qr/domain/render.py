"""Rendering a QR code: text and design in, image bytes out, in six formats from one drawing model."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from qrmesh.platform.errors import FailedPrecondition, InvalidArgument
from qrmesh.qr.domain import raster, vector
from qrmesh.qr.domain.checks import design_problems
from qrmesh.qr.domain.design import (
    Design,
    ErrorCorrection,
    EyeBallShape,
    EyeFrameShape,
    FrameStyle,
    ModuleShape,
)
from qrmesh.qr.domain.matrix import Symbol, encode_symbol
from qrmesh.qr.domain.scene import LogoPlacement, Scene, build_scene

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_QUIET_ZONE",
    "DEFAULT_SIZE",
    "ErrorCorrection",
    "Format",
    "Image",
    "Layout",
    "RenderOptions",
    "layout",
    "render",
]

MIN_SIZE = 64
MAX_SIZE = 4096
DEFAULT_SIZE = 512
MIN_DPI = 72
MAX_DPI = 2400
DEFAULT_DPI = 300
DEFAULT_QUIET_ZONE = 4
MM_PER_INCH = 25.4
POINTS_PER_INCH = 72


class Format(enum.Enum):
    """Image formats; the value is the media type."""

    PNG = "image/png"
    SVG = "image/svg+xml"
    PDF = "application/pdf"
    EPS = "application/postscript"
    JPEG = "image/jpeg"
    WEBP = "image/webp"

    @property
    def vector(self) -> bool:
        """Whether the format draws paths rather than pixels."""
        return self in (Format.SVG, Format.PDF, Format.EPS)


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Output format and size: `size` pixels, or `physical_size_mm` at `dpi` when set."""

    format: Format = Format.PNG
    size: int = DEFAULT_SIZE
    dpi: int = DEFAULT_DPI
    physical_size_mm: float | None = None

    def target_pixels(self) -> int:
        """The requested width/height in pixels; InvalidArgument when out of bounds."""
        if not MIN_DPI <= self.dpi <= MAX_DPI:
            raise InvalidArgument.field("dpi", f"must be between {MIN_DPI} and {MAX_DPI} (got {self.dpi})")
        if self.physical_size_mm is not None:
            pixels = round(self.physical_size_mm / MM_PER_INCH * self.dpi)
            if not MIN_SIZE <= pixels <= MAX_SIZE:
                raise InvalidArgument.field(
                    "physicalSizeMm",
                    f"{self.physical_size_mm:g} mm at {self.dpi} dpi is {pixels} pixels; "
                    f"it must come to {MIN_SIZE} to {MAX_SIZE} pixels",
                )
            return pixels
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise InvalidArgument.field("size", f"must be between {MIN_SIZE} and {MAX_SIZE} pixels (got {self.size})")
        return self.size


@dataclass(frozen=True, slots=True)
class Image:
    """A rendered image: its bytes, media type, pixel size, the symbol drawn and a strong ETag (SHA-256)."""

    data: bytes
    content_type: str
    width: int
    height: int
    symbol: Symbol
    etag: str


@dataclass(frozen=True, slots=True)
class Layout:
    """A code laid out for rendering: symbol, scene, logo placement and raster scale (pixels per module)."""

    symbol: Symbol
    scene: Scene
    placement: LogoPlacement | None
    scale: int

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return self.scene.width * self.scale

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return self.scene.height * self.scale


def error_correction_for(design: Design) -> ErrorCorrection:
    """The design's level (M when unset), raised to Q at least when there is a logo."""
    level = design.error_correction or ErrorCorrection.M
    if design.logo is not None and level < ErrorCorrection.Q:
        level = ErrorCorrection.Q
    return level


def layout(text: str, design: Design, options: RenderOptions) -> Layout:
    """Encode and lay out a code; modules are a whole number of pixels, as large as fits the target size."""
    target = options.target_pixels()
    symbol = encode_symbol(text, error_correction_for(design))
    scene, placement = build_scene(symbol, design)
    scale = max(1, target // max(scene.width, scene.height))
    return Layout(symbol=symbol, scene=scene, placement=placement, scale=scale)


def render(text: str, design: Design, options: RenderOptions, *, strict: bool = False) -> Image:
    """Draw `text` as a QR code; with `strict`, refuse (FailedPrecondition) designs that scan poorly."""
    laid_out = layout(text, design, options)
    if strict:
        problems = design_problems(laid_out.symbol, design, laid_out.placement)
        if problems:
            raise FailedPrecondition("; ".join(p.message for p in problems), reason=problems[0].reason)
    data = encode(laid_out, design, options)
    return Image(
        data=data,
        content_type=options.format.value,
        width=laid_out.width,
        height=laid_out.height,
        symbol=laid_out.symbol,
        etag=hashlib.sha256(data).hexdigest(),
    )


def encode(laid_out: Layout, design: Design, options: RenderOptions, *, fast: bool = True) -> bytes:
    """The laid-out code in `options.format`; `fast` allows the direct 1-bit PNG writer for plain designs."""
    fmt = options.format
    if fmt.vector:
        width_pt = laid_out.width / options.dpi * POINTS_PER_INCH
        height_pt = laid_out.height / options.dpi * POINTS_PER_INCH
        if fmt is Format.SVG:
            return vector.to_svg(laid_out.scene, laid_out.width, laid_out.height)
        if fmt is Format.PDF:
            return vector.to_pdf(laid_out.scene, width_pt, height_pt)
        return vector.to_eps(laid_out.scene, width_pt, height_pt)
    if fmt is Format.PNG and fast and _plain(design):
        quiet = design.quiet_zone
        dark = np.pad(laid_out.symbol.array(), quiet)
        return raster.two_color_png(dark, laid_out.scale, design.background, design.foreground, options.dpi)
    if fmt is Format.PNG:
        return raster.encode_png(raster.draw(laid_out.scene, laid_out.scale), options.dpi)
    picture = rasterize(laid_out)
    if fmt is Format.JPEG:
        return raster.encode_jpeg(raster.flatten(picture, design.effective_background), options.dpi)
    return raster.encode_webp(picture, options.dpi)


def rasterize(laid_out: Layout) -> PILImage.Image:
    """The laid-out code as RGBA pixels."""
    return raster.rasterize(laid_out.scene, laid_out.scale)


def _plain(design: Design) -> bool:
    """Whether the code is two flat colors of whole square modules (drawable as a 1-bit image)."""
    return (
        design.foreground.opaque
        and design.gradient is None
        and design.module_shape is ModuleShape.SQUARE
        and design.eye_frame_shape is EyeFrameShape.SQUARE
        and design.eye_ball_shape is EyeBallShape.SQUARE
        and design.eye_frame_color in (None, design.foreground)
        and design.eye_ball_color in (None, design.foreground)
        and design.logo is None
        and (design.frame is None or design.frame.style is FrameStyle.NONE)
    )
