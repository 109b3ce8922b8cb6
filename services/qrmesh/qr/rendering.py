"""From a render request to what the renderer draws: payload text, design and options.

The render RPCs and stored codes share this, so a code that was accepted for
storage renders the same way a render request with its content and design does.
"""

from __future__ import annotations

from qrmesh.platform.errors import FieldViolation, InvalidArgument
from qrmesh.qr import design_proto
from qrmesh.qr.content import payload_from_proto
from qrmesh.qr.domain import payloads
from qrmesh.qr.domain.design import Design, ErrorCorrection
from qrmesh.qr.domain.render import RenderOptions, layout
from qrmesh.qr.v1 import qr_code_service_pb2


def prepare(request: qr_code_service_pb2.RenderQrCodeRequest) -> tuple[str, Design, RenderOptions]:
    """The payload text, design and options a render request asks for."""
    payload = payload_from_proto(request.content)
    design = design_proto.design_from_proto(request)
    required = payloads.required_error_correction(payload)
    if required is not None:
        level = ErrorCorrection[required]
        if design.error_correction not in (None, level):
            raise InvalidArgument.field(
                "design.errorCorrection",
                f"this payload is always encoded at error correction {required} (its standard says so)",
                reason="ERROR_CORRECTION_FIXED",
            )
        if design.logo is not None:
            raise InvalidArgument.field(
                "design.logo",
                f"this payload is encoded at error correction {required}, which leaves no budget for a logo",
                reason="LOGO_NOT_ALLOWED",
            )
        design = design_proto.with_error_correction(design, level)
    return payloads.encode(payload), design, design_proto.options_from_proto(request)


def check_renderable(request: qr_code_service_pb2.RenderQrCodeRequest) -> None:
    """Raise what rendering `request` would raise (bad payload, bad design, content too long); CPU work."""
    text, design, options = prepare(request)
    layout(text, design, options)


def prefixed(error: InvalidArgument, prefix: str) -> InvalidArgument:
    """`error` with `prefix` (e.g. `qrCode.`) in front of every field it names."""
    violations = [FieldViolation(prefix + v.field, v.description) for v in error.violations]
    message = "; ".join(f"{v.field}: {v.description}" for v in violations[:5]) if violations else error.message
    return InvalidArgument(message, violations=violations, reason=error.reason, metadata=error.metadata)
