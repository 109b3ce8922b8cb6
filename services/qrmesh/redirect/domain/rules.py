"""A dynamic link's rules, compiled once per link version and evaluated per scan.

The server answers a scan in the order the rules document: `gate` (status,
`not_before` / `not_after`, schedule), then the password, then the scan
limit (`limit_reached` when the claim fails), then `route`. Every Decision a
link can give is built when it is compiled, so evaluating allocates nothing.

Statuses (pages carry pages.PAGE_STATUS):

- paused or archived: the "paused" page, 403 (it can resume, so not 410);
  never the fallback URL, which is for codes that are not active.
- before `not_before`: "not_yet_active", 403; after `not_after`: "expired",
  410; outside the schedule: "unavailable", 403; over `max_scans`:
  "limit_reached", 410.
- with `fallback_url`, those four redirect there instead: outcome FALLBACK,
  always 302 (even when the link uses 301/308, since a browser would cache a
  permanent redirect past the end of the temporary state), matched_rule
  "not_yet_active", "expired", "outside_schedule" or "limit_reached".
- a redirect: REDIRECTED with the link's redirect status (302 when not one
  of 301, 302, 303, 307, 308).
- a link (or split variant) with no URL to go to at all: the "unknown" page,
  404, UNKNOWN_CODE (the qr service never stores one).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from urllib.parse import parse_qsl, quote

from google.protobuf import timestamp_pb2

from qrmesh.qr.v1 import stored_qr_code_pb2
from qrmesh.redirect.domain import language, pages
from qrmesh.redirect.domain.schedule import WeeklySchedule, compile_schedule
from qrmesh.scans.v1 import scan_event_pb2

_Outcome = scan_event_pb2.ScanEvent
_QrCode = stored_qr_code_pb2.QrCode

FALLBACK_STATUS = 302
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_QUERY_LENGTH = 2048
"""Route conditions read only this much of a query string."""


@dataclass(frozen=True, slots=True)
class Visit:
    """What is known about one scan; `now` is aware (UTC), `sticky` from privacy.sticky_bucket."""

    now: datetime
    os: int
    device_type: int
    country: str
    languages: tuple[str, ...]
    query: str
    sticky: float


@dataclass(frozen=True, slots=True)
class Decision:
    """How to answer: a redirect to `url`, or the page `page` (then `url` is "")."""

    outcome: int
    status: int
    url: str
    page: str
    matched_rule: str


def page_decision(kind: str, outcome: int) -> Decision:
    """Show page `kind` with its status."""
    return Decision(outcome=outcome, status=pages.PAGE_STATUS[kind], url="", page=kind, matched_rule="")


UNKNOWN_CODE = page_decision(pages.UNKNOWN, _Outcome.UNKNOWN_CODE)
"""No code has this short code."""
PASSWORD_REQUIRED = page_decision(pages.PASSWORD, _Outcome.PASSWORD_REQUIRED)
"""Show the password form."""
PASSWORD_REJECTED = page_decision(pages.PASSWORD, _Outcome.PASSWORD_REJECTED)
"""Show the password form again, with an error."""
PASSWORD_THROTTLED = page_decision(pages.THROTTLED, _Outcome.PASSWORD_THROTTLED)
"""Too many wrong passwords from this address."""

_UTM_FIELDS = ("source", "medium", "campaign", "term", "content")


def append_utm(url: str, utm: tuple[tuple[str, str], ...]) -> str:
    """`url` with the (name, value) parameters added to its query, except names it already has.

    Values are percent-encoded (space as %20); the rest of the URL, including
    its fragment, is kept as it is.
    """
    if not utm:
        return url
    base, hash_mark, fragment = url.partition("#")
    path, _, query = base.partition("?")
    present = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    added = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in utm if name not in present)
    if not added:
        return url
    separator = "&" if query and not query.endswith("&") else ""
    return f"{path}?{query}{separator}{added}{hash_mark}{fragment}"


def query_parameters(query: str) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """The decoded names and (name, value) pairs of a query string (its first 2048 characters; cached)."""
    if query.startswith("?"):
        query = query[1:]
    if len(query) > MAX_QUERY_LENGTH:
        query = query[:MAX_QUERY_LENGTH].rpartition("&")[0]
    return _query_parameters(query)


@lru_cache(maxsize=4096)
def _query_parameters(query: str) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    pairs = parse_qsl(query, keep_blank_values=True, errors="replace")
    return frozenset(name for name, _ in pairs), frozenset(pairs)


class _Route:
    __slots__ = (
        "countries",
        "cumulative",
        "decision",
        "devices",
        "languages",
        "oses",
        "query_name",
        "query_pairs",
        "total",
        "variants",
        "window",
    )

    def __init__(
        self, route: stored_qr_code_pb2.Route, index: int, destination: str, redirect: Callable[[str, str], Decision]
    ) -> None:
        when = route.when
        name = route.name or f"route-{index}"
        self.oses = frozenset(when.os)
        self.devices = frozenset(when.device_types)
        self.countries = frozenset(country.strip().upper() for country in when.countries)
        self.languages = frozenset(language.normalize_tag(tag) for tag in when.languages)
        self.window: WeeklySchedule | None = (
            compile_schedule(when.time_window) if when.HasField("time_window") else None
        )
        if self.window is not None and self.window.always_open:
            self.window = None
        self.query_name = when.query_parameter.name if when.HasField("query_parameter") else ""
        self.query_pairs = frozenset((self.query_name, value) for value in when.query_parameter.values)
        self.decision = redirect(route.url or destination, name)
        cumulative: list[int] = []
        variants: list[Decision] = []
        for number, variant in enumerate(route.split, start=1):
            # Weights are 1 to 1000; an unset one counts as 1.
            cumulative.append((cumulative[-1] if cumulative else 0) + max(variant.weight, 1))
            label = f"{name}/{variant.name or f'variant-{number}'}"
            variants.append(redirect(variant.url or destination, label))
        self.cumulative = tuple(cumulative)
        self.variants = tuple(variants)
        self.total = cumulative[-1] if cumulative else 0

    def matches(self, visit: Visit) -> bool:
        if self.oses and visit.os not in self.oses:
            return False
        if self.devices and visit.device_type not in self.devices:
            return False
        if self.countries and visit.country not in self.countries:
            return False
        if self.languages and not language.matches(self.languages, visit.languages):
            return False
        if self.window is not None and not self.window.is_open(visit.now):
            return False
        if self.query_name:
            names, pairs = query_parameters(visit.query)
            if self.query_pairs:
                return not self.query_pairs.isdisjoint(pairs)
            return self.query_name in names
        return True

    def pick(self, sticky: float) -> Decision:
        if not self.total:
            return self.decision
        index = bisect_right(self.cumulative, sticky * self.total)
        return self.variants[min(index, len(self.variants) - 1)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


class CompiledLink:
    """A Link ready to answer scans: build it with compile_link when a link (version) is loaded."""

    __slots__ = (
        "_default",
        "_expired",
        "_limit_reached",
        "_not_after",
        "_not_before",
        "_not_yet_active",
        "_outside_schedule",
        "_paused",
        "_redirect_status",
        "_routes",
        "_schedule",
        "_utm",
        "destination_url",
        "fallback_url",
        "max_scans",
        "organization",
        "password_hash",
        "qr_code",
        "redirect_status",
        "short_code",
        "status",
        "store_full_ip",
        "version",
    )

    def __init__(self, link: stored_qr_code_pb2.Link) -> None:
        rules = link.rules
        self.short_code = link.short_code
        self.qr_code = link.qr_code
        self.organization = link.organization
        self.version = link.version
        self.status = link.status or _QrCode.ACTIVE
        self.store_full_ip = link.store_full_ip_addresses
        self.password_hash = link.password_hash
        self.max_scans = rules.max_scans
        self.redirect_status = link.redirect_status if link.redirect_status in REDIRECT_STATUSES else 302
        self.destination_url = link.destination_url
        self.fallback_url = rules.fallback_url
        self._utm = tuple((f"utm_{field}", value) for field in _UTM_FIELDS if (value := getattr(rules.utm, field)))

        self._paused: Decision | None = None
        if self.status in (_QrCode.PAUSED, _QrCode.ARCHIVED):
            self._paused = page_decision(pages.PAUSED, _Outcome.PAUSED)
        self._not_before = _datetime(rules.not_before) if rules.HasField("not_before") else None
        self._not_after = _datetime(rules.not_after) if rules.HasField("not_after") else None
        schedule = compile_schedule(rules.schedule) if rules.HasField("schedule") else None
        self._schedule = None if schedule is None or schedule.always_open else schedule
        self._not_yet_active = self._inactive(pages.NOT_YET_ACTIVE, _Outcome.NOT_YET_ACTIVE, "not_yet_active")
        self._expired = self._inactive(pages.EXPIRED, _Outcome.EXPIRED, "expired")
        self._outside_schedule = self._inactive(pages.UNAVAILABLE, _Outcome.OUTSIDE_SCHEDULE, "outside_schedule")
        self._limit_reached = self._inactive(pages.LIMIT_REACHED, _Outcome.LIMIT_REACHED, "limit_reached")

        self._default = self._redirect(self.destination_url, "")
        # Routes with nowhere to send scans (no URL, no split) are skipped.
        self._routes = tuple(
            _Route(route, index, self.destination_url, self._redirect)
            for index, route in enumerate(rules.routes, start=1)
            if route.url or route.split
        )

    def _inactive(self, kind: str, outcome: int, reason: str) -> Decision:
        if self.fallback_url:
            return Decision(_Outcome.FALLBACK, FALLBACK_STATUS, self.fallback_url, "", reason)
        return page_decision(kind, outcome)

    def _redirect(self, url: str, matched_rule: str) -> Decision:
        if not url:  # Dynamic codes always have a destination; without one there is nowhere to go.
            return UNKNOWN_CODE
        return Decision(_Outcome.REDIRECTED, self.redirect_status, append_utm(url, self._utm), "", matched_rule)

    def gate(self, now: datetime) -> Decision | None:
        """The answer when the link is not open at the aware datetime `now`; None when it is.

        Checked in order: paused/archived, `not_before`, `not_after`, schedule.
        """
        if self._paused is not None:
            return self._paused
        if self._not_before is not None and now < self._not_before:
            return self._not_yet_active
        if self._not_after is not None and now >= self._not_after:
            return self._expired
        if self._schedule is not None and not self._schedule.is_open(now):
            return self._outside_schedule
        return None

    def limit_reached(self) -> Decision:
        """The answer when `max_scans` scans were already redirected."""
        return self._limit_reached

    def route(self, visit: Visit) -> Decision:
        """The redirect for an open link: the first route whose conditions all match, else the destination."""
        for route in self._routes:
            if route.matches(visit):
                return route.pick(visit.sticky)
        return self._default


def compile_link(link: stored_qr_code_pb2.Link) -> CompiledLink:
    """Precompute everything a scan of `link` needs (zones, sets, intervals, weights, final URLs)."""
    return CompiledLink(link)
