"""Who may change whose membership: roles, their order and the last-owner rule."""

from __future__ import annotations

import enum

from qrmesh.platform.auth import Role
from qrmesh.platform.errors import FailedPrecondition, PermissionDenied


class MemberRole(enum.StrEnum):
    """A member's role, as stored; higher `rank` may do more."""

    OWNER = "OWNER"
    ADMIN = "ADMIN"
    EDITOR = "EDITOR"
    VIEWER = "VIEWER"

    @property
    def rank(self) -> int:
        """The guard's order of roles (`qrmesh.platform.auth.Role`): 4 for owners down to 1 for viewers."""
        return Role[self.value].rank


def _last_owner() -> FailedPrecondition:
    return FailedPrecondition(
        "the organization's last owner cannot be demoted or removed; make someone else owner first",
        reason="LAST_OWNER",
    )


def check_role_change(*, actor: MemberRole, current: MemberRole, new: MemberRole, owners: int) -> None:
    """Refuse a role change `actor` may not make, or one that would leave the organization without owner."""
    if current == new:
        return
    if MemberRole.OWNER in (current, new) and actor != MemberRole.OWNER:
        raise PermissionDenied("only owners may grant or take the owner role", reason="OWNER_REQUIRED")
    if actor.rank < MemberRole.ADMIN.rank:
        raise PermissionDenied("only owners and admins may change roles")
    if current == MemberRole.OWNER and owners <= 1:
        raise _last_owner()


def check_removal(*, actor: MemberRole, is_self: bool, target: MemberRole, owners: int) -> None:
    """Refuse a removal `actor` may not make; anyone may leave, except the last owner."""
    if not is_self:
        if actor.rank < MemberRole.ADMIN.rank:
            raise PermissionDenied("only owners and admins may remove other members")
        if target == MemberRole.OWNER and actor != MemberRole.OWNER:
            raise PermissionDenied("only owners may remove an owner", reason="OWNER_REQUIRED")
    if target == MemberRole.OWNER and owners <= 1:
        raise _last_owner()


def check_invitation_role(*, actor: MemberRole, role: MemberRole) -> None:
    """Refuse inviting someone as owner unless `actor` is an owner."""
    if role == MemberRole.OWNER and actor != MemberRole.OWNER:
        raise PermissionDenied("only owners may invite owners", reason="OWNER_REQUIRED")
