"""Resource names of the qr service (`organizations/{id}/qrCodes/{id}`) to ids and back."""

from __future__ import annotations

import re

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.domain.ids import is_id

_ORGANIZATION = re.compile(r"organizations/([a-z2-7]{16})")
_QR_CODE = re.compile(r"organizations/([a-z2-7]{16})/qrCodes/([^/]+)")
_SCAN_SETTINGS = re.compile(r"organizations/([a-z2-7]{16})/scanSettings")


def organization_id(name: str, *, field: str) -> str:
    """The id in `organizations/{id}`."""
    match = _ORGANIZATION.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}", reason="INVALID_NAME"
        )
    return match.group(1)


def qr_code_ids(name: str, *, field: str) -> tuple[str, str]:
    """(organization id, code id) in `organizations/{id}/qrCodes/{id}`."""
    match = _QR_CODE.fullmatch(name)
    if match is None or not is_id(match.group(2)):
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}/qrCodes/{qr_code}", reason="INVALID_NAME"
        )
    return match.group(1), match.group(2)


def scan_settings_organization(name: str, *, field: str) -> str:
    """The organization id in `organizations/{id}/scanSettings`."""
    match = _SCAN_SETTINGS.fullmatch(name)
    if match is None:
        raise InvalidArgument.field(
            field, "must be a resource name like organizations/{organization}/scanSettings", reason="INVALID_NAME"
        )
    return match.group(1)


def organization_name(organization: str) -> str:
    """`organizations/{id}`."""
    return f"organizations/{organization}"


def qr_code_name(organization: str, qr_code: str) -> str:
    """`organizations/{id}/qrCodes/{id}`."""
    return f"organizations/{organization}/qrCodes/{qr_code}"


def scan_settings_name(organization: str) -> str:
    """`organizations/{id}/scanSettings`."""
    return f"organizations/{organization}/scanSettings"
