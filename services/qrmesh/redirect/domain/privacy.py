"""What the redirect keeps about a visitor: cut addresses and keyed hashes, never raw identities."""

from __future__ import annotations

import hashlib
from datetime import date
from functools import lru_cache

from qrmesh.redirect.domain.addresses import ip_text, packed_ip

VISITOR_ID_LENGTH = 32
"""Hex characters in a visitor id (128 bits)."""


@lru_cache(maxsize=65536)
def anonymize_ip(ip: str) -> str:
    """The network of `ip`: IPv4 /24 ("203.0.113.0"), IPv6 /48 ("2001:db8:1::"); "" when invalid.

    An IPv4-mapped IPv6 address (`::ffff:203.0.113.7`) is treated as the IPv4 address.
    """
    packed = packed_ip(ip)
    if packed is None:
        return ""
    if len(packed) == 4:
        return ip_text(packed[:3] + b"\x00")
    return ip_text(packed[:6] + bytes(10))


class _HmacSha256:
    """HMAC-SHA256 (RFC 2104) with the keyed inner and outer states computed once.

    Half the cost of `hmac.digest` per message, which sets the key up every time.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\x00")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@lru_cache(maxsize=16)
def _visitor_mac(secret: bytes, day: date) -> _HmacSha256:
    day_key = _HmacSha256(secret).digest(b"qrmesh visitor id\x00" + day.isoformat().encode())
    return _HmacSha256(day_key)


def visitor_id(secret: bytes, day: date, ip: str, user_agent: str) -> str:
    """A 32-hex-character id of (address, user agent) for one UTC `day`.

    HMAC-SHA256 of `ip NUL user_agent` under a key derived from `secret` and
    the day (HMAC-SHA256(secret, "qrmesh visitor id" NUL ISO date)): the same
    visitor gets a new id every day, and ids of different days cannot be linked
    without the secret.
    """
    message = _encode(ip) + b"\x00" + _encode(user_agent)
    return _visitor_mac(secret, day).digest(message).hex()[:VISITOR_ID_LENGTH]


@lru_cache(maxsize=16)
def _sticky_mac(secret: bytes) -> _HmacSha256:
    return _HmacSha256(_HmacSha256(secret).digest(b"qrmesh sticky bucket"))


_BUCKET_SCALE = 2.0**-53


def sticky_bucket(secret: bytes, short_code: str, ip: str, user_agent: str) -> float:
    """A number in [0, 1) fixed for (code, address, user agent): the same visitor gets the same A/B variant.

    A keyed hash (HMAC-SHA256 under a key derived from `secret`), stable across
    days, different for each code so splits of different codes are
    independent; never stored.
    """
    message = _encode(short_code) + b"\x00" + _encode(ip) + b"\x00" + _encode(user_agent)
    digest = _sticky_mac(secret).digest(message)
    return (int.from_bytes(digest[:8], "big") >> 11) * _BUCKET_SCALE
