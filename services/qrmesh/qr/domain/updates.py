"""What an UpdateQrCode field mask changes, and what it does to a link's password."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from qrmesh.platform.errors import InvalidArgument

CHANGEABLE = ("display_name", "content", "design", "folder", "tags", "status", "rules", "redirect_type")
"""Fields an update may change; an empty mask (or `*`) changes all of them."""
IMMUTABLE = frozenset({"name", "kind", "short_code", "short_url", "create_time", "update_time", "scan_count", "etag"})
"""Fields set at creation or by the service; naming one in a mask is refused."""

PasswordChange = Literal["keep", "set", "clear"]


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """The fields an update changes.

    `rules_paths` are paths inside LinkRules when only some rules change; empty with
    `rules` in `fields` means the rules are replaced whole.
    """

    fields: frozenset[str]
    rules_paths: tuple[str, ...] = ()
    password_named: bool = False

    @property
    def whole_rules(self) -> bool:
        return "rules" in self.fields and not self.rules_paths

    def changes(self, name: str) -> bool:
        return name in self.fields


def plan_update(paths: Sequence[str], *, field: str = "updateMask") -> UpdatePlan:
    """The plan for a mask's `paths`; InvalidArgument for unknown or unchangeable fields."""
    if not paths or "*" in paths:
        return UpdatePlan(frozenset(CHANGEABLE))
    fields: set[str] = set()
    rules_paths: list[str] = []
    whole_rules = False
    password_named = False
    for path in paths:
        if path in CHANGEABLE:
            fields.add(path)
            whole_rules = whole_rules or path == "rules"
            continue
        if path.startswith("rules."):
            inner = path.removeprefix("rules.")
            if inner == "password_protected" or inner.startswith("password_protected."):
                raise InvalidArgument.field(
                    field,
                    "rules.password_protected is output only; set or clear rules.password",
                    reason="IMMUTABLE_FIELD",
                )
            fields.add("rules")
            rules_paths.append(inner)
            password_named = password_named or inner == "password"
            continue
        top = path.split(".", 1)[0]
        if top in IMMUTABLE:
            raise InvalidArgument.field(field, f"{top} cannot be changed", reason="IMMUTABLE_FIELD")
        if top in CHANGEABLE:
            raise InvalidArgument.field(
                field,
                f"{path!r}: only whole {top} can be updated (rules is the one field with subpaths)",
                reason="INVALID_UPDATE_MASK",
            )
        raise InvalidArgument.field(
            field, f"{path!r} is not a field of QrCode that can be updated", reason="INVALID_UPDATE_MASK"
        )
    if whole_rules:
        rules_paths = []
    return UpdatePlan(frozenset(fields), tuple(dict.fromkeys(rules_paths)), password_named)


def password_change(plan: UpdatePlan, password: str) -> PasswordChange:
    """What the update does to the password.

    Sent with the rules in the mask, a password replaces the old one. Clients never see the
    password, so replacing the rules without one keeps it; only `rules.password` named in the
    mask with an empty value removes it.
    """
    if not plan.changes("rules"):
        return "keep"
    if password:
        return "set" if plan.whole_rules or plan.password_named else "keep"
    return "clear" if plan.password_named else "keep"


def plan_scan_settings_update(paths: Sequence[str], *, field: str = "updateMask") -> None:
    """InvalidArgument unless `paths` (empty: every field) names only `store_full_ip_addresses`."""
    for path in paths:
        if path in ("store_full_ip_addresses", "*"):
            continue
        if path in ("name", "update_time"):
            raise InvalidArgument.field(field, f"{path} cannot be changed", reason="IMMUTABLE_FIELD")
        raise InvalidArgument.field(
            field, f"{path!r} is not a field of ScanSettings that can be updated", reason="INVALID_UPDATE_MASK"
        )
