"""Listing stored codes: orders, filters, and opaque page tokens bound to both.

A page token holds the sort value and id of the last code shown and a hash of
the listing it came from (organization, filters, order); a token used with
other filters is refused, so a page never silently mixes two listings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from qrmesh.platform.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_PAGE_BYTES = 8 * 1024 * 1024
"""A page stops early rather than grow past this (codes with large logos); the token resumes after it."""
ORDER_KEYS = ("create_time", "scan_count", "display_name")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Order:
    """A sort key and direction; ties are broken by id in the same direction."""

    key: str = "create_time"
    descending: bool = True


@dataclass(frozen=True, slots=True)
class Filters:
    """What a listing keeps; empty values keep everything. `status` None hides ARCHIVED codes."""

    folder: str = ""
    tag: str = ""
    kind: str | None = None
    status: str | None = None
    search: str = ""


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends: the sort value and id of its last code."""

    value: int | str
    id: str


def page_size(requested: int) -> int:
    """The page size to use: 50 when not set, at most 100."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def fitting(sizes: Sequence[int], limit: int, budget: int = MAX_PAGE_BYTES) -> int:
    """How many of the items (of these sizes in bytes) a page shows: at most `limit`, within `budget`
    unless the first alone exceeds it (a page always shows one item)."""
    used = 0
    for count, size in enumerate(sizes[:limit]):
        if count and used + size > budget:
            return count
        used += size
    return min(len(sizes), limit)


def parse_order(text: str, *, field: str = "orderBy") -> Order:
    """`create_time desc` when empty; `key` alone sorts ascending."""
    words = text.split()
    if not words:
        return Order()
    if len(words) > 2 or words[0] not in ORDER_KEYS or (len(words) == 2 and words[1] not in ("asc", "desc")):
        raise InvalidArgument.field(
            field,
            "must be create_time, scan_count or display_name, optionally followed by asc or desc",
            reason="INVALID_ORDER_BY",
        )
    return Order(words[0], len(words) == 2 and words[1] == "desc")


def normalize_filters(folder: str, tag: str, kind: str | None, status: str | None, search: str) -> Filters:
    """Filters in the form they are compared in: folder without surrounding slashes, tag without case."""
    return Filters(
        folder=folder.strip().strip("/"),
        tag=tag.strip().casefold(),
        kind=kind,
        status=status,
        search=search.strip(),
    )


def scope(organization: str, filters: Filters, order: Order) -> str:
    """A short hash naming one listing; page tokens carry it."""
    parts = [
        organization,
        filters.folder,
        filters.tag,
        filters.kind or "",
        filters.status or "",
        filters.search,
        order.key,
        "desc" if order.descending else "asc",
    ]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:24]


def like_pattern(text: str) -> str:
    """A LIKE pattern (escape character `\\`) matching any text that contains `text` literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def micros(moment: datetime) -> int:
    """A time as microseconds since the epoch (a cursor value)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """The time a cursor value stands for."""
    return _EPOCH + value * _MICROSECOND


def encode_page_token(cursor: Cursor, listing: str) -> str:
    """An opaque token for the page after `cursor` in the listing `listing` names."""
    payload = json.dumps({"s": listing, "v": cursor.value, "i": cursor.id}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, listing: str, order: Order, *, field: str = "pageToken") -> Cursor | None:
    """The cursor in `token` (None for the first page); InvalidArgument if it is malformed or from another listing."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(data, dict) or data.get("s") != listing:
            raise ValueError("other listing")
        value, item = data["v"], data["i"]
        expected = str if order.key == "display_name" else int
        if not isinstance(value, expected) or isinstance(value, bool) or not isinstance(item, str):
            raise ValueError("bad cursor")
        if isinstance(value, int):
            from_micros(value)  # in range
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error, OverflowError):
        raise InvalidArgument.field(
            field, "is not a page token from this listing (same filters and order)", reason="INVALID_PAGE_TOKEN"
        ) from None
    return Cursor(value=value, id=item)
