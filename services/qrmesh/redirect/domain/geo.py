"""Country of an IP address from the GeoLite2 data bundled with geoip2fast."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from geoip2fast import GeoIP2Fast

from qrmesh.redirect.domain.addresses import ip_text, packed_ip

DATA_FILE = "geoip2fast-ipv6.dat.gz"
"""The bundled file with both IPv4 and IPv6 networks (`geoip2fast.dat.gz` has IPv4 only)."""

_PROBES = ("8.8.8.8", "81.2.69.160", "10.0.0.1", "203.0.113.5", "2a00:1450:4001::1", "2001:db8::1")

_lock = threading.Lock()
_database: Any = None


def _load() -> Any:
    # geoip2fast keeps its tables in module globals, so a process can hold one
    # data file only: load the combined IPv4+IPv6 file once and share it.
    global _database
    with _lock:
        if _database is None:
            _database = GeoIP2Fast(geoip2fast_data_file=DATA_FILE)
        return _database


def _code(code: str) -> str:
    # geoip2fast answers "--" for private networks and addresses it does not know.
    return code.upper() if len(code) == 2 and code.isascii() and code.isalpha() else ""


class CountryLookup:
    """Maps addresses to ISO 3166-1 alpha-2 codes; the data (about 2 MB) is loaded on first construction.

    Private, reserved and link-local addresses, addresses outside the data and
    invalid text all give "". Results are cached per instance (`cache_size`).
    """

    country: Callable[[str], str]
    """`country(ip)`: "US", "SE", ... or ""."""

    def __init__(self, *, cache_size: int = 65536) -> None:
        self._database = _load()
        self._fast = True
        self._fast = all(self._find(packed_ip(ip) or b"") == self._find_public(ip) for ip in _PROBES)
        self.country = lru_cache(maxsize=cache_size)(self._country)

    def _country(self, ip: str) -> str:
        packed = packed_ip(ip)
        if packed is None:
            return ""
        # Only 2000::/3 is global unicast; other IPv6 ranges are local, reserved or
        # special (and geoip2fast would read ::1 as the IPv4 address 0.0.0.1).
        if len(packed) == 16 and packed[0] & 0xE0 != 0x20:
            return ""
        return self._find(packed)

    def _find(self, packed: bytes) -> str:
        if not self._fast:
            return self._find_public(ip_text(packed))
        # The two steps of geoip2fast 1.2.2's lookup() without building its result
        # object (a fifth of the cost); checked against lookup() at construction.
        try:
            number = int.from_bytes(packed, "big")
            root, chunk, _, last, _ = self._database._main_index_lookup(number)
            if number > last:
                return ""
            code, _, _ = self._database._country_lookup(root, chunk)
        except (TypeError, ValueError, AttributeError):
            return ""
        return _code(code)

    def _find_public(self, ip: str) -> str:
        return _code(self._database.lookup(ip).country_code)
