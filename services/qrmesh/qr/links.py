"""How dynamic links travel through Redis: the one place that knows the keys.

The qr service owns links. It writes each link's current form to Redis
(`qrmesh:link:{short_code}`) and announces every change on the channel
`qrmesh:links`; the redirect reads the key on a miss of its in-process cache
and drops its cached copy when a change is announced.

A stored value is `{version}:{Link bytes}`. Writes only ever move a key
forward: the put script refuses a version lower than or equal to the stored
one, so a slow writer holding an old copy cannot undo a newer edit. A value
with an empty payload means "no such code": version 0 is a negative-cache
entry written only when nothing is stored (it can never hide a newer code), a
higher version marks a deleted code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis

from qrmesh.qr.v1 import stored_qr_code_pb2

CHANNEL = "qrmesh:links"
"""Pub/sub channel; each message is a short code whose link changed."""
KEY_PREFIX = "qrmesh:link:"
LINK_TTL_SECONDS = 3600
"""Positive entries expire after an hour unless refreshed (a lost write heals)."""
MISSING_TTL_SECONDS = 60
"""Negative entries ("no such code") live a minute."""

# KEYS[1] = link key; ARGV = version, payload, ttl seconds.
_PUT = """
local current = redis.call('GET', KEYS[1])
local version = tonumber(ARGV[1])
if current then
  local stored = tonumber(string.match(current, '^(%d+):'))
  if stored and stored >= version then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""


def key(short_code: str) -> str:
    return KEY_PREFIX + short_code


@dataclass(frozen=True, slots=True)
class Stored:
    """A decoded Redis value: the link, or None when the code does not exist."""

    version: int
    link: stored_qr_code_pb2.Link | None


def encode(version: int, link: stored_qr_code_pb2.Link | None) -> bytes:
    payload = link.SerializeToString() if link is not None else b""
    return str(version).encode() + b":" + payload


def decode(value: bytes) -> Stored:
    """Parse a stored value; ValueError if it is not one of ours."""
    head, sep, payload = value.partition(b":")
    if not sep or not head.isdigit():
        raise ValueError("not a link cache value")
    if not payload:
        return Stored(int(head), None)
    link = stored_qr_code_pb2.Link()
    link.ParseFromString(payload)
    return Stored(int(head), link)


async def put(client: redis.Redis, short_code: str, version: int, link: stored_qr_code_pb2.Link | None) -> bool:
    """Store a link (or a deletion marker) unless a newer version is already stored."""
    payload = link.SerializeToString() if link is not None else b""
    ttl = LINK_TTL_SECONDS if link is not None or version > 0 else MISSING_TTL_SECONDS
    stored = await client.eval(_PUT, 1, key(short_code), str(version), payload, str(ttl))
    return bool(stored)


async def put_many(client: redis.Redis, items: Sequence[tuple[str, int, stored_qr_code_pb2.Link | None]]) -> list[bool]:
    """`put` for many (short code, version, link) at once, in one round trip; whether each was stored."""
    if not items:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for short_code, version, link in items:
            payload = link.SerializeToString() if link is not None else b""
            ttl = LINK_TTL_SECONDS if link is not None or version > 0 else MISSING_TTL_SECONDS
            pipe.eval(_PUT, 1, key(short_code), str(version), payload, str(ttl))
        results = await pipe.execute()
    return [bool(result) for result in results]


async def put_missing(client: redis.Redis, short_code: str) -> None:
    """Remember briefly that no code has this short code (never hides a real one)."""
    await client.set(key(short_code), b"0:", ex=MISSING_TTL_SECONDS, nx=True)


async def announce(client: redis.Redis, *short_codes: str) -> None:
    """Tell every redirect that these links changed."""
    if not short_codes:
        return
    async with client.pipeline(transaction=False) as pipe:
        for code in short_codes:
            pipe.publish(CHANNEL, code)
        await pipe.execute()


async def get(client: redis.Redis, short_code: str) -> Stored | None:
    """The stored value, or None when Redis holds nothing for this code."""
    value = await client.get(key(short_code))
    if value is None:
        return None
    return decode(value.encode() if isinstance(value, str) else value)
