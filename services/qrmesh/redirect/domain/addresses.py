"""Strict parsing of IP address text."""

from __future__ import annotations

import socket

_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def packed_ip(ip: str) -> bytes | None:
    """The address as 4 bytes (IPv4, also for IPv4-mapped IPv6) or 16 bytes (IPv6); None when invalid.

    Only the standard forms are accepted: dotted quads without leading zeros
    and IPv6 text without a zone (`fe80::1%eth0` is refused), no brackets, ports
    or spaces.
    """
    try:
        if ":" not in ip:
            return socket.inet_pton(socket.AF_INET, ip)
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED_PREFIX:
        return packed[12:]
    return packed


def ip_text(packed: bytes) -> str:
    """The canonical text of a 4- or 16-byte address."""
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
