"""Which webhook URLs and addresses may be called (server-side request forgery defence).

A URL must be absolute http(s), without user info, with a host. Every address its host resolves to is
checked with `forbidden_reason`: private, loopback, link-local, carrier-grade NAT, multicast, reserved,
unspecified, documentation and benchmarking ranges, cloud metadata addresses, and the IPv6 forms that
embed an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, NAT64, Teredo) are refused by what they embed.
The sender connects to the very address that was checked (no second resolution).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNSAFE_REASON = "UNSAFE_WEBHOOK_URL"

_V4_BLOCKED = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
]
_V6_BLOCKED = [
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "100::/64",  # discard
        "2001:db8::/32",  # documentation
        "2001:10::/28",  # ORCHID
        "fc00::/7",  # unique local (includes the metadata address fd00:ec2::254)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
]
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class UnsafeUrl(ValueError):
    """A webhook URL or address that may not be called; the message says why."""


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    for network in _NAT64:
        if address in network:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why `address` may not be called, or None. `allow_private` lets loopback addresses through (tests and local
    development only); every other range stays refused."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "an IPv6 address with a zone is not allowed"
        embedded = _embedded_v4(address)
        if embedded is not None:
            reason = forbidden_reason(embedded, allow_private=allow_private)
            return f"{reason} (embedded in {address})" if reason else None
        if address == ipaddress.IPv6Address("fd00:ec2::254"):
            return f"{address} is a cloud metadata address"
        blocked: ipaddress.IPv4Network | ipaddress.IPv6Network | None = next(
            (n for n in _V6_BLOCKED if address in n), None
        )
    else:
        if address == ipaddress.IPv4Address("169.254.169.254"):
            return f"{address} is a cloud metadata address"
        blocked = next((n for n in _V4_BLOCKED if address in n), None)
    if blocked is None:
        return None
    if allow_private and address.is_loopback:
        return None
    return f"{address} is in a private or reserved range ({blocked})"


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL, split for the sender."""

    url: str
    scheme: str
    host: str
    """The host name or address, lower-case, without IPv6 brackets."""
    port: int
    path: str
    """Path and query, at least "/"."""

    def literal(self) -> IPAddress | None:
        """The host as an address when it is one."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_url(url: str, *, allow_private: bool = False) -> Target:
    """Check a webhook URL's form (and its address, when the host is a literal one); UnsafeUrl if refused."""
    try:
        parts: SplitResult = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl("must not contain user info (user:password@)")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeUrl("must name a host")
    if any(c.isspace() for c in url.strip()):
        raise UnsafeUrl("must not contain spaces")
    if (host == "localhost" or host.endswith(".localhost")) and not allow_private:
        raise UnsafeUrl("must not point at localhost")
    target = Target(
        url=url.strip(),
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
    )
    literal = target.literal()
    if literal is None and _looks_numeric(host):
        raise UnsafeUrl("must not use a numeric host that is not a standard address")
    if literal is not None:
        reason = forbidden_reason(literal, allow_private=allow_private)
        if reason:
            raise UnsafeUrl(f"points at a forbidden address: {reason}")
    return target


def _looks_numeric(host: str) -> bool:
    """Hosts like `2130706433`, `0x7f.1` or `017.0.0.1` that some resolvers read as addresses."""
    labels = host.split(".")
    return all(label.isdigit() or label.startswith("0x") for label in labels if label)


def check_addresses(addresses: list[IPAddress], *, allow_private: bool = False) -> IPAddress:
    """The first address to connect to, if every one is allowed; UnsafeUrl naming the first that is not."""
    if not addresses:
        raise UnsafeUrl("the host has no address")
    for address in addresses:
        reason = forbidden_reason(address, allow_private=allow_private)
        if reason:
            raise UnsafeUrl(f"resolves to a forbidden address: {reason}")
    return addresses[0]
