"""AIP-158 pagination: page sizes and opaque page tokens that resume after the last item shown."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from qrmesh.platform.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends: the (create time, id) of its last item."""

    create_time: datetime
    id: str


def page_size(requested: int) -> int:
    """The page size to use: 50 when not set, at most 100."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_page_token(cursor: Cursor, scope: str) -> str:
    """An opaque token for the page after `cursor`, valid only for the listing `scope` names."""
    micros = (cursor.create_time - _EPOCH) // _MICROSECOND
    payload = json.dumps({"s": scope, "t": micros, "i": cursor.id}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, scope: str, *, field: str = "pageToken") -> Cursor | None:
    """The cursor in `token` (None for the first page); InvalidArgument if it is malformed or from another listing."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(data, dict) or data.get("s") != scope:
            raise ValueError("other listing")
        micros, item = data["t"], data["i"]
        if not isinstance(micros, int) or not isinstance(item, str):
            raise ValueError("bad cursor")
        moment = _EPOCH + micros * _MICROSECOND
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error, OverflowError):
        raise InvalidArgument.field(
            field, "is not a page token from this listing", reason="INVALID_PAGE_TOKEN"
        ) from None
    return Cursor(create_time=moment, id=item)
