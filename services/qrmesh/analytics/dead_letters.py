"""Reading the dead letters of one stream, newest first, a page at a time."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from qrmesh.platform.errors import InvalidArgument

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter as stored."""

    stream_id: str
    reason: str
    time: datetime
    deliveries: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Page:
    letters: list[Letter]
    next_page_token: str


def encode_token(stream: str, after: Letter) -> str:
    """An opaque token for the page after `after`."""
    micros = (after.time - _EPOCH) // timedelta(microseconds=1)
    payload = json.dumps({"s": stream, "t": micros, "i": after.stream_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def decode_token(stream: str, token: str) -> tuple[datetime, str] | None:
    """(time, stream id) of the last letter of the previous page; None for the first page."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode("ascii")))
        if not isinstance(data, dict) or data.get("s") != stream:
            raise ValueError("another stream")
        micros, stream_id = data["t"], data["i"]
        if not isinstance(micros, int) or isinstance(micros, bool) or not isinstance(stream_id, str):
            raise ValueError("bad cursor")
        return _EPOCH + timedelta(microseconds=micros), stream_id
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error, OverflowError):
        raise InvalidArgument.field(
            "pageToken", "is not a page token from ListDeadLetters", reason="INVALID_PAGE_TOKEN"
        ) from None


async def list_dead_letters(engine: AsyncEngine, stream: str, page_size: int, page_token: str) -> Page:
    """One page of the stream's dead letters, newest first."""
    if page_size < 0 or page_size > MAX_PAGE:
        raise InvalidArgument.field("pageSize", f"must be 0 to {MAX_PAGE}", reason="INVALID_PAGE_SIZE")
    size = page_size or DEFAULT_PAGE
    after = decode_token(stream, page_token)
    where = "stream = :stream"
    params: dict[str, object] = {"stream": stream, "limit": size + 1}
    if after is not None:
        where += " AND (time, stream_id) < (:time, :stream_id)"
        params.update(time=after[0], stream_id=after[1])
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT stream_id, reason, time, deliveries, payload FROM analytics.dead_letters "  # noqa: S608
                f"WHERE {where} ORDER BY time DESC, stream_id DESC LIMIT :limit"
            ),
            params,
        )
        letters = [Letter(str(r[0]), str(r[1]), r[2], int(r[3]), bytes(r[4])) for r in rows]
    shown = letters[:size]
    token = encode_token(stream, shown[-1]) if len(letters) > size else ""
    return Page(shown, token)
