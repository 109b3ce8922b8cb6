"""One delivery attempt over HTTP, SSRF-safe.

The host is resolved here (`loop.getaddrinfo`) and every address it has is checked; the request then goes
to the checked address itself (the URL carries the address; `Host` and, for https, the TLS server name and
certificate check carry the host name), so a second resolution cannot swap in another address. Redirects are
not followed by the client: up to `max_redirects` are followed here, each target parsed, resolved and checked
again. Connections are never reused (no keep-alive), so a TLS session made for one host name never carries
another's request. Proxies from the environment are ignored. The answer's body is read up to 64 KiB; its first
KiB is kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from qrmesh.webhooks.domain.ssrf import IPAddress, Target, UnsafeUrl, check_addresses, parse_url

MAX_READ = 64 * 1024
EXCERPT = 1024
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to."""

    status_code: int
    """The final HTTP status; 0 when there was none."""
    latency: float
    """Seconds the attempt took."""
    excerpt: str
    """The first KiB of the final answer's body, as text."""
    error: str
    """Why it failed; empty on a 2xx."""
    unsafe: bool = False
    """The URL (or a redirect) pointed at a forbidden address."""


async def resolve(target: Target, *, allow_private: bool) -> IPAddress:
    """The address to connect to: the host's addresses, all of them checked (UnsafeUrl if one is refused)."""
    literal = target.literal()
    if literal is not None:
        return check_addresses([literal], allow_private=allow_private)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # gaierror, a malformed name (UnicodeError, embedded NUL)
        raise LookupError(f"could not resolve {target.host}: {exc}") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return check_addresses(addresses, allow_private=allow_private)


class Sender:
    """Posts signed bodies to webhook endpoints (one client per process, no connection reuse)."""

    def __init__(
        self, *, connect_timeout: float, total_timeout: float, max_redirects: int, allow_private: bool
    ) -> None:
        self.total_timeout = total_timeout
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(total_timeout, connect=connect_timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        """POST `body` to `url` (following checked redirects) within the total timeout."""
        start = time.monotonic()
        status, excerpt = 0, ""
        try:
            async with asyncio.timeout(self.total_timeout):
                current = url
                for _ in range(self.max_redirects + 1):
                    target = parse_url(current, allow_private=self.allow_private)
                    address = await resolve(target, allow_private=self.allow_private)
                    status, excerpt, location = await self._post(target, address, headers, body)
                    if status in _REDIRECTS and location:
                        current = urljoin(current, location)
                        continue
                    break
                else:
                    return AttemptResult(status, time.monotonic() - start, excerpt, "too many redirects")
        except UnsafeUrl as exc:
            return AttemptResult(status, time.monotonic() - start, excerpt, f"refused: {exc}", unsafe=True)
        except TimeoutError:
            return AttemptResult(0, time.monotonic() - start, "", f"timed out after {self.total_timeout:g} s")
        except LookupError as exc:
            return AttemptResult(0, time.monotonic() - start, "", str(exc))
        except httpx.HTTPError as exc:
            return AttemptResult(0, time.monotonic() - start, "", f"{type(exc).__name__}: {exc}"[:500])
        except OSError as exc:
            return AttemptResult(0, time.monotonic() - start, "", f"{type(exc).__name__}: {exc}"[:500])
        latency = time.monotonic() - start
        if 200 <= status < 300:
            return AttemptResult(status, latency, excerpt, "")
        if status in _REDIRECTS:
            return AttemptResult(status, latency, excerpt, f"HTTP {status} without a usable Location")
        return AttemptResult(status, latency, excerpt, f"HTTP {status}")

    async def _post(
        self, target: Target, address: IPAddress, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, str, str]:
        host = f"[{address}]" if address.version == 6 else str(address)
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
        if ":" in target.host and target.port == default_port:
            host_header = f"[{target.host}]"
        elif ":" in target.host:
            host_header = f"[{target.host}]:{target.port}"
        request = self.client.build_request(
            "POST",
            f"{target.scheme}://{host}:{target.port}{target.path}",
            headers={**headers, "host": host_header, "accept-encoding": "identity"},
            content=body,
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        response = await self.client.send(request, stream=True)
        try:
            read = bytearray()
            async for chunk in response.aiter_raw():
                read.extend(chunk)
                if len(read) >= MAX_READ:
                    break
        finally:
            await response.aclose()
        excerpt = bytes(read[:EXCERPT]).decode("utf-8", errors="replace")
        return response.status_code, excerpt, response.headers.get("location", "")
