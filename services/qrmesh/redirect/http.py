"""The redirect's HTTP/1.1 server: `GET`/`HEAD`/`POST /r/{code}` and `GET /healthz`.

A small asyncio protocol over httptools' parser, because this is the hot path:
a scan of a cached link is answered synchronously inside `data_received`, with
no task, no await and no network round trip; its event goes into the
recorder's buffer. Only a cache miss, a password or a scan limit take the slow
(async) path. Responses go out in request order on each keep-alive connection.

Metrics cost the hot path a few plain-int additions: outcomes are counted in a
list, latencies in `Buckets`, and both are read at scrape time. A scan gets a
span of its own only while tracing exports (`tracing_enabled()`); the scan's
event then carries that span's context, so the stream's consumers continue the
trace. Otherwise the event carries the `traceparent` the request came with.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from typing import Any

import httptools
import redis.asyncio as redis
from google.protobuf import timestamp_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from redis.exceptions import RedisError

from qrmesh.platform.errors import Unavailable
from qrmesh.platform.ids import uuid7
from qrmesh.platform.metrics import Buckets
from qrmesh.platform.telemetry import extract_context, tracing_enabled, w3c_headers
from qrmesh.redirect.config import RedirectConfig
from qrmesh.redirect.domain import pages
from qrmesh.redirect.domain.agent import Agent, classify
from qrmesh.redirect.domain.geo import CountryLookup
from qrmesh.redirect.domain.language import preferred_languages
from qrmesh.redirect.domain.passwords import verify_password
from qrmesh.redirect.domain.privacy import anonymize_ip, sticky_bucket, visitor_id
from qrmesh.redirect.domain.rules import CompiledLink, Decision, Visit
from qrmesh.redirect.events import ScanRecorder
from qrmesh.redirect.resolver import NOT_CACHED, LinkResolver
from qrmesh.redirect.suspensions import Suspensions
from qrmesh.scans.v1 import scan_event_pb2

log = logging.getLogger("qrmesh.redirect.http")

Outcome = scan_event_pb2.ScanEvent.Outcome
CLIENT_IP_HEADER = b"x-qrmesh-client-ip"
"""Set by the edge (Envoy) to the client's address; nobody else reaches this server."""
_WANTED = frozenset(
    {b"user-agent", b"referer", b"accept-language", CLIENT_IP_HEADER, b"traceparent", b"tracestate", b"content-type"}
)
_MAX_BODY = 8 * 1024
_MAX_URL = 4 * 1024
_MAX_HEADERS = 32 * 1024
_CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    423: "Locked",
    429: "Too Many Requests",
    451: "Unavailable For Legal Reasons",
    503: "Service Unavailable",
}
_PAGE_HEADERS = (
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"Referrer-Policy: no-referrer\r\n"
    b"X-Robots-Tag: noindex\r\n"
    b"Content-Security-Policy: " + pages.CONTENT_SECURITY_POLICY.encode() + b"\r\n"
)
_UNAVAILABLE_BODY = (
    b"<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
    b"<title>Try again</title><p>This code cannot be opened right now. Please try again in a moment.</p>"
)
LAPSED = Decision(Outcome.PAUSED, pages.PAGE_STATUS[pages.PAUSED], "", pages.PAUSED, "subscription_lapsed")
"""A code of an organization whose subscription lapsed: the "paused" page until it renews."""
_PASSWORD_WINDOW = 900
_MAX_VERIFYING = 4
"""Password checks (argon2: ~19 MiB and a few ms of CPU each) running at once; more get 503."""


class _Date:
    """The Date header, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.value


_date = _Date()


@lru_cache(maxsize=16384)
def _location(url: str) -> bytes:
    """A URL as a Location header value: ASCII only, nothing that could end the header."""
    safe = urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")
    return safe.encode("ascii")


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode())


def redirect_response(status: int, url: str, *, keep_alive: bool) -> bytes:
    return (
        _status_line(status)
        + _date.header()
        + b"Location: "
        + _location(url)
        + b"\r\nCache-Control: private, max-age=0\r\nContent-Length: 0\r\n"
        + (b"" if keep_alive else b"Connection: close\r\n")
        + b"\r\n"
    )


def page_response(
    status: int, body: bytes, *, keep_alive: bool, head: bool, extra: bytes = b"", html: bool = True
) -> bytes:
    headers = _PAGE_HEADERS if html else b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
    return (
        _status_line(status)
        + _date.header()
        + headers
        + extra
        + b"Content-Length: %d\r\n" % len(body)
        + (b"" if keep_alive else b"Connection: close\r\n")
        + b"\r\n"
        + (b"" if head else body)
    )


class Request:
    """One parsed request."""

    __slots__ = ("__dict__", "body", "headers", "keep_alive", "method", "path", "peer", "query", "span")

    def __init__(
        self,
        method: bytes,
        path: str,
        query: str,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        peer: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.peer = peer
        self.span: trace.Span | None = None
        """The scan's span while tracing exports."""

    def header(self, name: bytes, limit: int) -> str:
        value = self.headers.get(name)
        if value is None:
            return ""
        return value[:limit].decode("utf-8", "replace")

    @functools.cached_property
    def user_agent(self) -> str:
        return self.header(b"user-agent", 512)

    @functools.cached_property
    def client_ip(self) -> str:
        forwarded = self.headers.get(CLIENT_IP_HEADER)
        if forwarded and _trusted_peer(self.peer):
            return forwarded[:64].decode("ascii", "replace").strip()
        return self.peer


class ScanApp:
    """Decides each scan's answer and records it."""

    def __init__(
        self,
        resolver: LinkResolver,
        recorder: ScanRecorder,
        config: RedirectConfig,
        *,
        throttle: redis.Redis | None,
        countries: CountryLookup | None = None,
        suspended: Suspensions | None = None,
    ) -> None:
        self.resolver = resolver
        self.suspended: Suspensions | frozenset[str] = suspended if suspended is not None else frozenset()
        """Organizations whose subscription lapsed (in memory; their codes answer "paused")."""
        self.recorder = recorder
        self.config = config
        self.throttle_redis = throttle
        self.countries = countries or CountryLookup()
        self.secret = config.visitor_secret
        self.serving = True
        self._local_attempts: dict[str, tuple[int, float]] = {}
        self._exhausted: set[tuple[str, int]] = set()
        self._verifying = 0
        self.outcomes = [0] * (max(Outcome.values()) + 1)
        """Scans recorded, by outcome number."""
        self.fast_latency = Buckets()
        """Seconds to answer scans answered at once (from memory)."""
        self.slow_latency = Buckets()
        """Seconds to answer scans that waited (Redis, the qr service, a password check)."""
        self.tracing = tracing_enabled()
        self._tracer = trace.get_tracer("qrmesh.redirect")

    # -- entry points --------------------------------------------------------------------------

    def answer_now(self, request: Request) -> bytes | None:
        """The answer if it needs no waiting (the common case), else None: use `answer`."""
        path = request.path
        if not path.startswith("/r/"):
            return self._other(request)
        method = request.method
        if method not in (b"GET", b"HEAD"):
            return None
        code = path[3:]
        if not _valid_code(code):
            return self._unknown(request, code)
        found = self.resolver.cached(code)
        if found is NOT_CACHED:
            return None
        if found is None:
            return self._unknown(request, code)
        link: CompiledLink = found  # type: ignore[assignment]
        now = datetime.now(UTC)
        gated = LAPSED if link.organization in self.suspended else link.gate(now)
        if gated is not None:
            return self._decided(request, code, link, gated, self._agent(request), now)
        if link.password_hash or link.max_scans:
            return None
        agent = self._agent(request)
        decision = link.route(self._visit(request, code, agent, now))
        return self._decided(request, code, link, decision, agent, now)

    async def answer(self, request: Request) -> bytes:
        """A scan `answer_now` could not answer (it returned None): it waits for the qr service,
        Redis or a password check."""
        code = request.path[3:]
        head = request.method == b"HEAD"
        if not _valid_code(code):
            return self._unknown(request, code)
        if request.method not in (b"GET", b"HEAD", b"POST"):
            return page_response(
                405,
                b"method not allowed\n",
                keep_alive=request.keep_alive,
                head=head,
                extra=b"Allow: GET, HEAD, POST\r\n",
                html=False,
            )
        try:
            link = await self.resolver.resolve(code)
        except Unavailable:
            return self._unavailable(request)
        if link is None:
            return self._unknown(request, code)
        now = datetime.now(UTC)
        agent = self._agent(request)
        gated = LAPSED if link.organization in self.suspended else link.gate(now)
        if gated is not None:
            return self._decided(request, code, link, gated, agent, now)
        posted = request.method == b"POST"
        if link.password_hash:
            if not posted:
                return self._page(request, code, link, "password", Outcome.PASSWORD_REQUIRED, agent, now)
            refused = await self._check_password(request, code, link, agent, now)
            if refused is not None:
                return refused
        # Every redirect of a limited code is claimed, bots' and HEAD's too: otherwise a
        # preview bot, curl or HEAD could read the destination after the limit.
        if link.max_scans:
            if (code, link.version) in self._exhausted:
                return self._decided(request, code, link, link.limit_reached(), agent, now)
            try:
                allowed = await self.resolver.claim_scan(code)
            except Unavailable:
                return self._unavailable(request)
            if not allowed:
                # Spent for this version of the link; an edit (a higher limit) makes a new version.
                if len(self._exhausted) > 100_000:
                    self._exhausted.clear()
                self._exhausted.add((code, link.version))
                return self._decided(request, code, link, link.limit_reached(), agent, now)
        decision = link.route(self._visit(request, code, agent, now))
        if posted and decision.url:
            # After a form POST the browser must GET the destination.
            decision = Decision(decision.outcome, 303, decision.url, decision.page, decision.matched_rule)
        return self._decided(request, code, link, decision, agent, now)

    # -- telemetry -----------------------------------------------------------------------------

    def open_span(self, request: Request) -> None:
        """Start the scan's span, a child of the request's `traceparent` when it has one."""
        parent = None
        if b"traceparent" in request.headers:
            parent = extract_context(request.header(b"traceparent", 64), request.header(b"tracestate", 256))
        method = request.method.decode("ascii", "replace")
        request.span = self._tracer.start_span(
            f"{method} /r/{{code}}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": "/r/{code}", "url.path": request.path[:128]},
        )

    def answered_in(self, request: Request, answer: bytes, started: float, *, slow: bool) -> None:
        """Count a scan's latency and end its span (`answer` is the whole response)."""
        (self.slow_latency if slow else self.fast_latency).observe(time.perf_counter() - started)
        span = request.span
        if span is not None:
            status = int(answer[9:12])
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()

    # -- pieces --------------------------------------------------------------------------------

    def _other(self, request: Request) -> bytes:
        head = request.method == b"HEAD"
        if request.path == "/healthz" and request.method in (b"GET", b"HEAD"):
            status, body = (200, b"ok\n") if self.serving else (503, b"shutting down\n")
            return page_response(status, body, keep_alive=request.keep_alive, head=head, html=False)
        return page_response(404, b"not found\n", keep_alive=request.keep_alive, head=head, html=False)

    @staticmethod
    def _agent(request: Request) -> Agent:
        return classify(request.user_agent)

    def _visit(self, request: Request, code: str, agent: Agent, now: datetime) -> Visit:
        ip = request.client_ip
        return Visit(
            now=now,
            os=agent.os,
            device_type=agent.device_type,
            country=self.countries.country(ip),
            languages=preferred_languages(request.header(b"accept-language", 512)),
            query=request.query,
            sticky=sticky_bucket(self.secret, code, ip, request.user_agent),
        )

    def _decided(
        self, request: Request, code: str, link: CompiledLink, decision: Decision, agent: Agent, now: datetime
    ) -> bytes:
        self._record(request, code, link, decision.outcome, decision.url, decision.matched_rule, agent, now)
        if decision.url:
            return redirect_response(decision.status, decision.url, keep_alive=request.keep_alive)
        body = pages.page(decision.page, short_code=code)
        return page_response(decision.status, body, keep_alive=request.keep_alive, head=request.method == b"HEAD")

    def _page(
        self,
        request: Request,
        code: str,
        link: CompiledLink,
        kind: str,
        outcome: int,
        agent: Agent,
        now: datetime,
        *,
        error: str = "",
        extra: bytes = b"",
    ) -> bytes:
        self._record(request, code, link, outcome, "", "", agent, now)
        body = pages.page(kind, short_code=code, error=error)
        return page_response(
            pages.PAGE_STATUS[kind], body, keep_alive=request.keep_alive, head=request.method == b"HEAD", extra=extra
        )

    def _unknown(self, request: Request, code: str) -> bytes:
        now = datetime.now(UTC)
        self._record(request, code[:64], None, Outcome.UNKNOWN_CODE, "", "", self._agent(request), now)
        body = pages.page("unknown")
        return page_response(
            pages.PAGE_STATUS["unknown"], body, keep_alive=request.keep_alive, head=request.method == b"HEAD"
        )

    def _unavailable(self, request: Request) -> bytes:
        return page_response(
            503,
            _UNAVAILABLE_BODY,
            keep_alive=request.keep_alive,
            head=request.method == b"HEAD",
            extra=b"Retry-After: 1\r\n",
        )

    async def _check_password(
        self, request: Request, code: str, link: CompiledLink, agent: Agent, now: datetime
    ) -> bytes | None:
        key = f"qrmesh:password-attempts:{code}:{_throttle_address(request.client_ip)}"
        code_key = f"qrmesh:password-failures:{code}"
        limit = self.config.password_attempts
        attempts = await self._attempt(key)
        # Also a cap per code, on failures from everywhere: many addresses cannot guess a short PIN.
        failures = await self._attempt(code_key, by=0)
        if attempts > limit or failures > limit * 20:
            return self._page(
                request, code, link, "throttled", Outcome.PASSWORD_THROTTLED, agent, now, extra=b"Retry-After: 900\r\n"
            )
        password = _form_field(request, "password")
        if self._verifying >= _MAX_VERIFYING:
            return self._unavailable(request)  # argon2 takes memory and CPU: a few at a time
        self._verifying += 1
        try:
            right = bool(password) and await asyncio.to_thread(_verify, link.password_hash, password)
        finally:
            self._verifying -= 1
        if right:
            await self._forget_attempts(key)
            return None
        await self._attempt(code_key)
        return self._page(
            request, code, link, "password", Outcome.PASSWORD_REJECTED, agent, now, error="That password is not right."
        )

    async def _attempt(self, key: str, by: int = 1) -> int:
        """Count `by` password attempts under `key`; the count within the window."""
        if self.throttle_redis is not None:
            try:
                async with self.throttle_redis.pipeline(transaction=True) as pipe:
                    pipe.incrby(key, by)
                    pipe.expire(key, _PASSWORD_WINDOW, nx=True)
                    count, _ = await asyncio.wait_for(pipe.execute(), 0.5)
                return int(count)
            except (RedisError, OSError, TimeoutError):
                pass
        # Redis is away: count in this process so guessing stays throttled.
        now = time.monotonic()
        count, until = self._local_attempts.get(key, (0, now + _PASSWORD_WINDOW))
        if until < now:
            count, until = 0, now + _PASSWORD_WINDOW
        self._local_attempts[key] = (count + by, until)
        if len(self._local_attempts) > 100_000:
            # Full: drop the expired; if nothing expired, the oldest half (never all of it).
            alive = {k: v for k, v in self._local_attempts.items() if v[1] >= now}
            if len(alive) > 50_000:
                alive = dict(list(alive.items())[-50_000:])
            self._local_attempts = alive
        return count + by

    async def _forget_attempts(self, key: str) -> None:
        self._local_attempts.pop(key, None)
        if self.throttle_redis is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self.throttle_redis.delete(key), 0.5)

    def _record(
        self,
        request: Request,
        code: str,
        link: CompiledLink | None,
        outcome: int,
        url: str,
        matched_rule: str,
        agent: Agent,
        now: datetime,
    ) -> None:
        ip = request.client_ip
        user_agent = request.user_agent
        stamp = now.timestamp()
        seconds = int(stamp)
        span = request.span
        if span is not None and span.is_recording():
            span.set_attribute("qrmesh.scan.outcome", Outcome.Name(outcome))  # type: ignore[arg-type]
            traceparent, tracestate = w3c_headers(span.get_span_context())
        else:
            traceparent, tracestate = request.header(b"traceparent", 64), request.header(b"tracestate", 256)
        event = scan_event_pb2.ScanEvent(
            event_id=uuid7(),
            time=timestamp_pb2.Timestamp(seconds=seconds, nanos=int((stamp - seconds) * 1e9)),
            short_code=code,
            outcome=outcome,  # type: ignore[arg-type]
            destination_url=url,
            matched_rule=matched_rule,
            user_agent=user_agent,
            referer=request.header(b"referer", 512),
            accept_language=request.header(b"accept-language", 256),
            country=self.countries.country(ip),
            ip_address=ip if link is not None and link.store_full_ip else anonymize_ip(ip),
            visitor_id=visitor_id(self.secret, now.date(), ip, user_agent),
            bot=agent.bot or request.method == b"HEAD",
            method=request.method.decode("ascii", "replace"),
            query=request.query[:512],
            traceparent=traceparent,
            tracestate=tracestate,
        )
        if link is not None:
            event.qr_code = link.qr_code
            event.organization = link.organization
        self.recorder.record(event)
        self.outcomes[outcome] += 1


def _verify(password_hash: str, password: str) -> bool:
    return verify_password(password_hash, password)


# Who may tell us the client's address: the edge, which reaches the redirect over loopback or
# a private network (in Kubernetes a NetworkPolicy lets only Envoy in). Anyone else is the client.
_TRUSTED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


@lru_cache(maxsize=4096)
def _trusted_peer(peer: str) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _TRUSTED_NETWORKS)


def _throttle_address(ip: str) -> str:
    """The unit password guesses are counted per: an IPv4 address, or an IPv6 /64 (one subscriber)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _valid_code(code: str) -> bool:
    return 0 < len(code) <= 64 and _CODE_CHARS.issuperset(code)


def _form_field(request: Request, name: str) -> str:
    content_type = request.headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if content_type != b"application/x-www-form-urlencoded":
        return ""
    try:
        fields = urllib.parse.parse_qs(request.body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return ""
    values = fields.get(name)
    return values[0][:256] if values else ""


class HttpProtocol(asyncio.Protocol):
    """One client connection (usually Envoy's, kept alive and reused)."""

    __slots__ = (
        "_body",
        "_busy",
        "_header_bytes",
        "_headers",
        "_queue",
        "_url",
        "app",
        "closed",
        "parser",
        "peer",
        "track",
        "transport",
    )

    def __init__(self, app: ScanApp, track: Callable[[HttpProtocol, bool], None]) -> None:
        self.app = app
        self.track = track
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body = b""
        self._header_bytes = 0
        self._queue: collections.deque[Request] = collections.deque()
        self._busy = False
        self.closed = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's transports are Transports
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.track(self, True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.track(self, False)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"upgrades are not supported\n")
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raises; a size limit keeps its own answer.
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _TooLarge):
                self._fail(cause.status, cause.message)
            else:
                self._fail(400, b"malformed request\n")
        except _TooLarge as exc:
            self._fail(exc.status, exc.message)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._url = b""
        self._headers = {}
        self._body = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > _MAX_URL:
            raise _TooLarge(414, b"the link is too long\n")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADERS:
            raise _TooLarge(431, b"the request headers are too large\n")
        name = name.lower()
        if name in _WANTED and name not in self._headers:
            self._headers[name] = value

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > _MAX_BODY:
            raise _TooLarge(413, b"the request body is too large\n")

    def on_message_complete(self) -> None:
        if self.closed:
            return  # the connection is closing: later pipelined requests get no answer, so no scan
        raw = self._url
        path, _, query = raw.partition(b"?")
        fragment = query.find(b"#")
        if fragment >= 0:
            query = query[:fragment]
        request = Request(
            self.parser.get_method(),
            path.decode("utf-8", "replace"),
            query.decode("utf-8", "replace"),
            self._headers,
            self._body,
            self.parser.should_keep_alive(),
            self.peer,
        )
        if self._busy:
            self._queue.append(request)
            return
        self._serve(request)

    # answering
    def _serve(self, request: Request) -> None:
        app = self.app
        started = time.perf_counter()
        scan = request.path.startswith("/r/")
        if scan and app.tracing:
            app.open_span(request)
        try:
            answer = app.answer_now(request)
        except Exception:
            log.exception("scan failed")
            answer = page_response(500, b"internal error\n", keep_alive=False, head=False, html=False)
        if answer is not None:
            if scan:
                app.answered_in(request, answer, started, slow=False)
            self._write(answer, request.keep_alive)
            return
        self._busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._serve_slow(request, started, scan))
        task.add_done_callback(_log_failure)

    async def _serve_slow(self, request: Request, started: float, scan: bool) -> None:
        span = request.span
        try:
            if span is None:
                answer = await self.app.answer(request)
            else:
                # Calls made while answering (Redis, the qr service) become the span's children.
                with trace.use_span(span, end_on_exit=False):
                    answer = await self.app.answer(request)
        except Exception:
            log.exception("scan failed")
            answer = page_response(500, b"internal error\n", keep_alive=False, head=False, html=False)
        if scan:
            self.app.answered_in(request, answer, started, slow=True)
        self._busy = False
        if self.closed:
            return
        self._write(answer, request.keep_alive and b"Connection: close" not in answer[:512])
        while self._queue and not self._busy and not self.closed:
            self._serve(self._queue.popleft())
        if not self._busy and not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def _write(self, answer: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        transport.write(answer)
        if not keep_alive:
            transport.close()
            self.closed = True

    def _fail(self, status: int, message: bytes) -> None:
        self._write(page_response(status, message, keep_alive=False, head=False, html=False), False)

    @property
    def idle(self) -> bool:
        return not self._busy and not self._queue


class _TooLarge(Exception):
    def __init__(self, status: int, message: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("scan task failed", exc_info=task.exception())


class HttpServer:
    """The listening socket and its connections."""

    def __init__(self, app: ScanApp, sock: Any) -> None:
        self.app = app
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._connections: set[HttpProtocol] = set()

    def _track(self, protocol: HttpProtocol, alive: bool) -> None:
        if alive:
            self._connections.add(protocol)
        else:
            self._connections.discard(protocol)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self.app, self._track), sock=self.sock, backlog=1024
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting, let answers in progress finish (within `grace`), close connections."""
        self.app.serving = False
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        # Polling: many connections, none with an event of its own to wait on.
        while time.monotonic() < deadline and any(not c.idle for c in self._connections):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
