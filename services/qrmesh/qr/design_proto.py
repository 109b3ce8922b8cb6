"""Translation of the design and output options of a render request into domain values."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import TypeVar

from qrmesh.platform.errors import InvalidArgument
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
from qrmesh.qr.domain.render import DEFAULT_SIZE, Format, RenderOptions
from qrmesh.qr.v1 import design_pb2, qr_code_service_pb2

DEFAULT_QUIET_ZONE = 4
DEFAULT_DPI = 300
DEFAULT_LOGO_RATIO = 0.2
MIN_LOGO_RATIO = 0.05
MIN_DPI = 72
WHITE = Color(255, 255, 255, 255)
BLACK = Color(0, 0, 0, 255)

E = TypeVar("E", bound=Enum)
_LEGACY_LEVELS = {
    qr_code_service_pb2.RenderQrCodeRequest.LOW: ErrorCorrection.L,
    qr_code_service_pb2.RenderQrCodeRequest.MEDIUM: ErrorCorrection.M,
    qr_code_service_pb2.RenderQrCodeRequest.QUARTILE: ErrorCorrection.Q,
    qr_code_service_pb2.RenderQrCodeRequest.HIGH: ErrorCorrection.H,
}
ProtoDesign = design_pb2.Design
Request = qr_code_service_pb2.RenderQrCodeRequest


def _enum(domain: type[E], name: str, default: E) -> E:
    """The domain enum member named like a proto enum value; `default` for *_UNSPECIFIED."""
    if name.endswith("UNSPECIFIED"):
        return default
    return domain[name]


def _color(text: str, field: str, default: Color) -> Color:
    return parse_color(text, field) if text else default


def _optional_color(text: str, field: str) -> Color | None:
    return parse_color(text, field) if text else None


def _gradient(gradient: ProtoDesign.Gradient) -> Gradient:
    stops = []
    previous = -1.0
    for index, stop in enumerate(gradient.stops):
        field = f"design.gradient.stops[{index}]"
        if stop.offset < previous:
            raise InvalidArgument.field(f"{field}.offset", "must not be smaller than the offset before it")
        previous = stop.offset
        stops.append((stop.offset, parse_color(stop.color, f"{field}.color")))
    return Gradient(
        type=_enum(GradientType, ProtoDesign.Gradient.Type.Name(gradient.type), GradientType.LINEAR),
        rotation=gradient.rotation,
        stops=tuple(stops),
    )


def _logo(logo: ProtoDesign.Logo) -> Logo:
    ratio = logo.size_ratio or DEFAULT_LOGO_RATIO
    if ratio < MIN_LOGO_RATIO:
        raise InvalidArgument.field(
            "design.logo.sizeRatio", f"must be between {MIN_LOGO_RATIO} and 0.35 (got {ratio:g})"
        )
    return Logo(image=logo.image, size_ratio=ratio, margin=logo.margin, clear_behind=logo.clear_behind)


def _frame(frame: ProtoDesign.Frame) -> Frame | None:
    style = _enum(FrameStyle, ProtoDesign.Frame.Style.Name(frame.style), FrameStyle.NONE)
    if style is FrameStyle.NONE:
        return None
    return Frame(
        style=style,
        text=frame.text,
        text_color=_color(frame.text_color, "design.frame.textColor", WHITE),
        color=_optional_color(frame.color, "design.frame.color"),
    )


def design_from_proto(request: Request) -> Design:
    """The domain design of a render request (deprecated top-level fields honoured)."""
    design = request.design
    foreground = _color(design.foreground, "design.foreground", BLACK)
    background: Color | None = None
    if design.background.strip().lower() != "transparent":
        background = _color(design.background, "design.background", WHITE)
    if design.HasField("quiet_zone"):
        quiet_zone = design.quiet_zone
    elif request.HasField("quiet_zone"):
        quiet_zone = request.quiet_zone
    else:
        quiet_zone = DEFAULT_QUIET_ZONE
    level: ErrorCorrection | None = None
    if design.error_correction:
        level = ErrorCorrection[ProtoDesign.ErrorCorrection.Name(design.error_correction)]
    elif request.error_correction:
        level = _LEGACY_LEVELS[request.error_correction]
    return Design(
        foreground=foreground,
        background=background,
        gradient=_gradient(design.gradient) if design.HasField("gradient") else None,
        module_shape=_enum(ModuleShape, ProtoDesign.ModuleShape.Name(design.module_shape), ModuleShape.SQUARE),
        eye_frame_shape=_enum(
            EyeFrameShape, ProtoDesign.EyeFrame.Shape.Name(design.eye_frame.shape), EyeFrameShape.SQUARE
        ),
        eye_frame_color=_optional_color(design.eye_frame.color, "design.eyeFrame.color"),
        eye_ball_shape=_enum(EyeBallShape, ProtoDesign.EyeBall.Shape.Name(design.eye_ball.shape), EyeBallShape.SQUARE),
        eye_ball_color=_optional_color(design.eye_ball.color, "design.eyeBall.color"),
        logo=_logo(design.logo) if design.HasField("logo") else None,
        frame=_frame(design.frame) if design.HasField("frame") else None,
        quiet_zone=quiet_zone,
        error_correction=level,
    )


def with_error_correction(design: Design, level: ErrorCorrection) -> Design:
    """`design` encoded at exactly `level`."""
    return dataclasses.replace(design, error_correction=level)


def options_from_proto(request: Request) -> RenderOptions:
    """Output format and size of a render request."""
    dpi = request.dpi or DEFAULT_DPI
    if dpi < MIN_DPI:
        raise InvalidArgument.field("dpi", f"must be between {MIN_DPI} and 2400 (got {dpi})")
    return RenderOptions(
        format=_enum(Format, Request.Format.Name(request.format), Format.PNG),
        size=request.size or DEFAULT_SIZE,
        dpi=dpi,
        physical_size_mm=request.physical_size_mm or None,
    )
