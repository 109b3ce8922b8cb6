"""Stream entries made into rows of `analytics.scans`.

`Enricher.prepare` decodes one entry's ScanEvent and derives what is stored:
the device from the user agent (`domain.enrichment`, cached per agent), the
language and referrer host from the headers, region and city from a
MaxMind-format city database when one is configured (geoip2fast, which the
redirect uses for countries, ships no city data). The country is the one the
redirect resolved. Text is stripped of NUL characters (PostgreSQL refuses them).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import maxminddb
from google.protobuf.message import DecodeError

from qrmesh.analytics.domain import enrichment
from qrmesh.analytics.domain.aggregate import COUNTED, SCAN_COLUMNS
from qrmesh.scans.v1 import scan_event_pb2

Event = scan_event_pb2.ScanEvent
_QR_CODE = re.compile(r"^organizations/([^/]+)/qrCodes/([^/]+)$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SECONDS = 253_402_300_799
"""The last second a Timestamp can hold (9999-12-31T23:59:59Z); later ones overflow a datetime."""
ScanRow = tuple[Any, ...]
__all__ = ["SCAN_COLUMNS", "CityDatabase", "Enricher", "Invalid", "Prepared", "ScanRow", "event_time"]


class Invalid(Exception):
    """The entry can never be stored (not a ScanEvent, no valid id or time): it is dead-lettered at once."""


class Prepared(NamedTuple):
    """One entry ready to store."""

    entry_id: bytes | str
    """The stream entry's id, as Redis answered it."""
    row: ScanRow
    """Values of SCAN_COLUMNS."""
    counted: bool
    """Whether rollups count it (REDIRECTED)."""
    traceparent: str
    tracestate: str

    @property
    def event_id(self) -> str:
        """The event id, lowercase."""
        return str(self.row[0])

    @property
    def key(self) -> tuple[datetime, str]:
        """The raw table's primary key (time, event id)."""
        return self.row[1], self.row[0]

    @property
    def organization_id(self) -> str:
        return str(self.row[2])


class CityDatabase:
    """Region and city of an address from a MaxMind-format city database (GeoLite2-City, DB-IP City Lite...)."""

    def __init__(self, path: Path) -> None:
        self._reader = maxminddb.open_database(str(path))
        self.lookup = lru_cache(maxsize=65_536)(self._lookup)

    def _lookup(self, address: str) -> tuple[str, str, str]:
        """(country, region as "SE-AB", city in English); empty strings where unknown."""
        try:
            record: Any = self._reader.get(address)
        except ValueError:
            return "", "", ""
        if not isinstance(record, dict):
            return "", "", ""
        country = str((record.get("country") or {}).get("iso_code") or "")
        subdivisions = record.get("subdivisions") or []
        subdivision = str(subdivisions[0].get("iso_code") or "") if subdivisions else ""
        city = str(((record.get("city") or {}).get("names") or {}).get("en") or "")
        return country, enrichment.region_code(country, subdivision), city

    def close(self) -> None:
        self._reader.close()


def _clean(text: str) -> str:
    """Without NUL characters (PostgreSQL text cannot hold them). Only headers the scanner chose can carry
    them; what the redirect derived itself cannot."""
    return text.replace("\x00", "") if "\x00" in text else text


def event_time(event: Event) -> datetime:
    """The event's time at microsecond precision, the same on every delivery."""
    return _EPOCH + timedelta(seconds=event.time.seconds, microseconds=event.time.nanos // 1000)


class Enricher:
    """Makes stream entries into rows."""

    def __init__(self, cities: CityDatabase | None = None) -> None:
        self.cities = cities

    def place(self, address: str) -> tuple[str, str, str]:
        """(country, region, city) of an address; empty without a city database or for bad addresses."""
        if self.cities is None or not address:
            return "", "", ""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "", "", ""
        return self.cities.lookup(str(ip))

    def decode(self, payload: bytes | None) -> Event:
        """The entry's ScanEvent; Invalid when there is none."""
        if payload is None:
            raise Invalid("the entry has no `event` field")
        try:
            return Event.FromString(payload)
        except DecodeError as exc:
            raise Invalid(f"the `event` field is not a ScanEvent: {exc}") from None

    def prepare(self, entry_id: bytes | str, event: Event) -> Prepared | None:
        """The row of an event; None when it is not stored (no organization: an unknown code).
        Invalid when it never can be."""
        if not event.organization or not event.qr_code or event.outcome == Event.UNKNOWN_CODE:
            return None
        match = _QR_CODE.match(event.qr_code)
        if match is None:
            raise Invalid(f"qr_code {event.qr_code[:200]!r} is not organizations/{{organization}}/qrCodes/{{qr_code}}")
        organization_id, code_id = match.group(1), match.group(2)
        if event.organization != f"organizations/{organization_id}":
            raise Invalid(f"organization {event.organization[:200]!r} does not own qr_code {event.qr_code[:200]!r}")
        event_id = event.event_id
        if _UUID.match(event_id) is None:
            raise Invalid(f"event_id {event_id[:100]!r} is not a UUID (8-4-4-4-12 hex digits)")
        if not event.HasField("time") or event.time.seconds <= 0:
            raise Invalid("the event has no time")
        if event.time.seconds > MAX_SECONDS or not 0 <= event.time.nanos < 1_000_000_000:
            raise Invalid(f"the event's time ({event.time.seconds} s, {event.time.nanos} ns) is not a valid timestamp")
        bot = event.bot
        user_agent = _clean(event.user_agent)
        agent = enrichment.parse_agent(user_agent, bot=bot)
        ip_address = event.ip_address
        country = event.country.upper()
        if self.cities is not None:
            geo_country, region, city = self.place(ip_address)
            if not country:
                country = geo_country
            elif geo_country and geo_country != country:
                region = city = ""  # the city database disagrees with the redirect's country: trust neither
        else:
            region = city = ""
        row = (
            event_id.lower(),
            _EPOCH + timedelta(seconds=event.time.seconds, microseconds=event.time.nanos // 1000),
            organization_id,
            code_id,
            event.short_code,
            event.outcome,
            event.destination_url,
            event.matched_rule,
            country,
            region,
            city,
            agent.device_type,
            agent.device_brand,
            agent.os,
            agent.browser,
            enrichment.language(event.accept_language),
            enrichment.referrer_host(_clean(event.referer)) if event.referer else "",
            bot,
            event.visitor_id,
            ip_address,
            user_agent,
        )
        return Prepared(entry_id, row, event.outcome == COUNTED, event.traceparent, event.tracestate)
