"""Which plan features a stored code's design and rules use (the entitlements the billing service grants).

- `design.full`: a logo, a gradient, a frame (any style but none) or custom finder
  patterns (an eye frame or eye ball shape other than square, or an eye color).
  Colors, module shape, quiet zone and error correction are basic design.
- `rules.password`: a password on a dynamic code.
- `rules.schedule`: weekly opening hours, or a route with a time window.

A change needs a feature only when it sets or changes what uses it: a code made
on a bigger plan keeps working (and can be renamed or re-pointed) after a
downgrade, but its logo or schedule cannot be edited without the feature.
"""

from __future__ import annotations

from qrmesh.billing.domain.entitlements import DESIGN_FULL, RULES_PASSWORD, RULES_SCHEDULE
from qrmesh.qr.v1 import design_pb2, stored_qr_code_pb2

Design = design_pb2.Design
LinkRules = stored_qr_code_pb2.LinkRules


def _frame(design: Design) -> bytes | None:
    if design.HasField("frame") and design.frame.style not in (Design.Frame.STYLE_UNSPECIFIED, Design.Frame.NONE):
        return design.frame.SerializeToString(deterministic=True)
    return None


def _eyes(design: Design) -> bytes | None:
    frame, ball = design.eye_frame, design.eye_ball
    custom_frame = frame.shape not in (Design.EyeFrame.SHAPE_UNSPECIFIED, Design.EyeFrame.SQUARE) or bool(frame.color)
    custom_ball = ball.shape not in (Design.EyeBall.SHAPE_UNSPECIFIED, Design.EyeBall.SQUARE) or bool(ball.color)
    if custom_frame or custom_ball:
        return frame.SerializeToString(deterministic=True) + b"|" + ball.SerializeToString(deterministic=True)
    return None


def full_design_parts(design: Design) -> dict[str, bytes]:
    """The parts of `design` that need the full design, each with a fingerprint of its settings."""
    parts: dict[str, bytes] = {}
    if design.HasField("logo"):
        parts["logo"] = design.logo.SerializeToString(deterministic=True)
    if design.HasField("gradient"):
        parts["gradient"] = design.gradient.SerializeToString(deterministic=True)
    if (frame := _frame(design)) is not None:
        parts["frame"] = frame
    if (eyes := _eyes(design)) is not None:
        parts["eyes"] = eyes
    return parts


def _schedules(rules: LinkRules) -> bytes | None:
    parts = [rules.schedule.SerializeToString(deterministic=True)] if rules.HasField("schedule") else []
    parts += [
        f"{index}:".encode() + route.when.time_window.SerializeToString(deterministic=True)
        for index, route in enumerate(rules.routes)
        if route.when.HasField("time_window")
    ]
    return b"|".join(parts) if parts else None


def required_features(
    *,
    old_design: Design | None,
    new_design: Design | None,
    old_rules: LinkRules | None,
    new_rules: LinkRules | None,
    password_set: bool,
) -> list[str]:
    """The plan features a change from the old design and rules to the new ones needs (None: unchanged);
    `password_set` when the change sets a new password."""
    needed: list[str] = []
    if new_design is not None:
        before = full_design_parts(old_design) if old_design is not None else {}
        after = full_design_parts(new_design)
        if any(before.get(part) != fingerprint for part, fingerprint in after.items()):
            needed.append(DESIGN_FULL)
    if password_set:
        needed.append(RULES_PASSWORD)
    if new_rules is not None:
        schedule = _schedules(new_rules)
        if schedule is not None and schedule != (_schedules(old_rules) if old_rules is not None else None):
            needed.append(RULES_SCHEDULE)
    return needed
