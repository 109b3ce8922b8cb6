"""The rules of a dynamic code's link, checked and put in canonical form before they are stored.

The proto's own rules (lengths, URL schemes, list sizes) have been checked
before this code runs; here are the ones a proto cannot say: time ranges, time
zones, schedule windows, routes that have exactly one destination, country and
language codes, password length. Every problem is reported at once, each with
the REST JSON path of its field.

Canonical form: countries upper case (`SE`), languages lower case (`pt-br`),
duplicates dropped, days of a window sorted, unnamed routes named `route-N`,
unnamed split variants named `a`, `b`, ..., unset variant weights 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import field_mask_pb2
from google.protobuf.internal.containers import RepeatedScalarFieldContainer

from qrmesh.platform.errors import FieldViolation, InvalidArgument
from qrmesh.qr.v1 import stored_qr_code_pb2

LinkRules = stored_qr_code_pb2.LinkRules
Schedule = stored_qr_code_pb2.Schedule
Route = stored_qr_code_pb2.Route
RouteCondition = stored_qr_code_pb2.RouteCondition

MIN_PASSWORD_LENGTH = 4
MAX_PASSWORD_LENGTH = 128
MAX_QUERY_VALUE_LENGTH = 200
MIN_SPLIT_VARIANTS = 2

REDIRECT_STATUS = {"FOUND": 302, "MOVED_PERMANENTLY": 301, "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}
"""HTTP status of each `QrCode.RedirectType`."""

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_TIME_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{1,8})*")
_DAYS = frozenset(range(1, 8))
"""google.type.DayOfWeek from MONDAY (1) to SUNDAY (7)."""
_OS = frozenset(value.number for value in RouteCondition.Os.DESCRIPTOR.values if value.number)
_DEVICES = frozenset(value.number for value in RouteCondition.DeviceType.DESCRIPTOR.values if value.number)

T = TypeVar("T", bound=int | str)


@dataclass(slots=True)
class _Problems:
    """Violations found so far; `raise_any` reports them all, under the first one's reason."""

    found: list[tuple[FieldViolation, str]] = field(default_factory=list)

    def add(self, path: str, description: str, reason: str) -> None:
        self.found.append((FieldViolation(path, description), reason))

    def raise_any(self) -> None:
        if not self.found:
            return
        violations = [violation for violation, _ in self.found]
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:5])
        if len(violations) > 5:
            summary += f"; and {len(violations) - 5} more"
        raise InvalidArgument(summary, violations=violations, reason=self.found[0][1])


def redirect_status(redirect_type: str) -> int:
    """The HTTP status for a redirect type name; 302 for an unset one."""
    return REDIRECT_STATUS.get(redirect_type, 302)


@lru_cache(maxsize=1024)
def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone this system knows ("UTC", "Europe/Stockholm")."""
    if len(name) > 64 or _TIME_ZONE.fullmatch(name) is None:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def check_password(password: str, *, field: str) -> None:
    """InvalidArgument (INVALID_PASSWORD) unless `password` is 4 to 128 characters."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidArgument.field(
            field,
            f"must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long (got {len(password)})",
            reason="INVALID_PASSWORD",
        )


def normalize_rules(rules: LinkRules, *, field: str) -> LinkRules:
    """A checked copy of `rules` in canonical form; InvalidArgument naming every problem.

    The password is kept as given (the caller hashes it) and `password_protected`, an
    output, is cleared.
    """
    out = LinkRules()
    out.CopyFrom(rules)
    out.password_protected = False
    problems = _Problems()
    for name in ("not_before", "not_after"):
        if out.HasField(name):
            stamp = getattr(out, name)
            if not (_MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS and 0 <= stamp.nanos < 1_000_000_000):
                problems.add(f"{field}.{_json(name)}", "must be a time between years 1 and 9999", "INVALID_TIME")
    if out.HasField("not_before") and out.HasField("not_after"):
        start, end = out.not_before, out.not_after
        if (end.seconds, end.nanos) <= (start.seconds, start.nanos):
            problems.add(f"{field}.notAfter", "must be later than notBefore", "INVALID_TIME_RANGE")
    if out.password and not MIN_PASSWORD_LENGTH <= len(out.password) <= MAX_PASSWORD_LENGTH:
        problems.add(
            f"{field}.password",
            f"must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long (got {len(out.password)})",
            "INVALID_PASSWORD",
        )
    if out.max_scans < 0:
        problems.add(f"{field}.maxScans", "must be 0 (no limit) or more", "INVALID_MAX_SCANS")
    if out.HasField("schedule"):
        _schedule(out.schedule, f"{field}.schedule", problems)
    for index, route in enumerate(out.routes):
        _route(route, index, f"{field}.routes[{index}]", problems)
    problems.raise_any()
    return out


def _schedule(schedule: Schedule, path: str, problems: _Problems) -> None:
    if schedule.time_zone and not is_time_zone(schedule.time_zone):
        problems.add(
            f"{path}.timeZone",
            f"{schedule.time_zone!r} is not an IANA time zone such as Europe/Stockholm or UTC",
            "INVALID_TIME_ZONE",
        )
    if not schedule.windows:
        problems.add(f"{path}.windows", "must have at least 1 window", "INVALID_SCHEDULE")
    for index, window in enumerate(schedule.windows):
        where = f"{path}.windows[{index}]"
        days = list(window.days)
        unknown = [day for day in days if day not in _DAYS]
        if unknown:
            problems.add(f"{where}.days", "must be days from MONDAY to SUNDAY", "INVALID_SCHEDULE")
        else:
            del window.days[:]
            window.days.extend(sorted(set(days)))
        ends = (
            ("startTime", window.HasField("start_time"), window.start_time, False),
            ("endTime", window.HasField("end_time"), window.end_time, True),
        )
        for json_name, present, time, closing in ends:
            if not present:
                problems.add(f"{where}.{json_name}", "is required", "INVALID_SCHEDULE")
            elif not _valid_time(time, closing=closing):
                limit = "00:00 to 24:00" if closing else "00:00 to 23:59:59"
                problems.add(f"{where}.{json_name}", f"must be a time of day from {limit}", "INVALID_SCHEDULE")


def _valid_time(time: Any, *, closing: bool) -> bool:
    """Whether a google.type.TimeOfDay is a time of day (24:00 only as a closing time)."""
    if closing and (time.hours, time.minutes, time.seconds, time.nanos) == (24, 0, 0, 0):
        return True
    hours, minutes, seconds, nanos = int(time.hours), int(time.minutes), int(time.seconds), int(time.nanos)
    return 0 <= hours <= 23 and 0 <= minutes <= 59 and 0 <= seconds <= 59 and 0 <= nanos < 10**9


def _route(route: Route, index: int, path: str, problems: _Problems) -> None:
    if not route.name:
        route.name = f"route-{index + 1}"
    if route.url and route.split:
        problems.add(path, "must have either url or split, not both", "INVALID_ROUTE")
    elif not route.url and not route.split:
        problems.add(path, "needs a destination: url, or a split of at least 2 variants", "INVALID_ROUTE")
    elif route.split and len(route.split) < MIN_SPLIT_VARIANTS:
        problems.add(f"{path}.split", f"must have at least {MIN_SPLIT_VARIANTS} variants", "INVALID_ROUTE")
    seen: set[str] = set()
    for position, variant in enumerate(route.split):
        if not variant.name:
            variant.name = chr(ord("a") + position)
        if variant.weight == 0:
            variant.weight = 1
        if variant.name in seen:
            problems.add(f"{path}.split[{position}].name", f"{variant.name!r} is used twice", "INVALID_ROUTE")
        seen.add(variant.name)
    if route.HasField("when"):
        _condition(route.when, f"{path}.when", problems)


def _condition(when: RouteCondition, path: str, problems: _Problems) -> None:
    if any(value not in _OS for value in when.os):
        problems.add(f"{path}.os", "must list IOS, ANDROID, WINDOWS, MACOS or LINUX", "INVALID_ROUTE")
    else:
        _dedupe_ints(when.os)
    if any(value not in _DEVICES for value in when.device_types):
        problems.add(f"{path}.deviceTypes", "must list MOBILE, TABLET or DESKTOP", "INVALID_ROUTE")
    else:
        _dedupe_ints(when.device_types)
    countries: list[str] = []
    for index, country in enumerate(when.countries):
        code = country.strip()
        if len(code) != 2 or not (code.isascii() and code.isalpha()):
            problems.add(
                f"{path}.countries[{index}]",
                f"{country!r} is not a two-letter country code such as SE",
                "INVALID_COUNTRY",
            )
        elif code.upper() not in countries:
            countries.append(code.upper())
    _replace(when.countries, countries)
    languages: list[str] = []
    for index, language in enumerate(when.languages):
        tag = language.strip().lower()
        if len(tag) > 35 or _LANGUAGE.fullmatch(tag) is None:
            problems.add(
                f"{path}.languages[{index}]",
                f"{language!r} is not a language tag such as en or pt-BR",
                "INVALID_LANGUAGE",
            )
        elif tag not in languages:
            languages.append(tag)
    _replace(when.languages, languages)
    if when.HasField("time_window"):
        _schedule(when.time_window, f"{path}.timeWindow", problems)
    if when.HasField("query_parameter"):
        for index, value in enumerate(when.query_parameter.values):
            if len(value) > MAX_QUERY_VALUE_LENGTH:
                problems.add(
                    f"{path}.queryParameter.values[{index}]",
                    f"must be at most {MAX_QUERY_VALUE_LENGTH} characters long",
                    "INVALID_ROUTE",
                )


def _dedupe_ints(values: RepeatedScalarFieldContainer[T]) -> None:
    _replace(values, list(dict.fromkeys(values)))


def _replace(values: RepeatedScalarFieldContainer[T], items: list[T]) -> None:
    if list(values) != items:
        del values[:]
        values.extend(items)


def _json(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def merge_rules(current: LinkRules, incoming: LinkRules, paths: Sequence[str], *, field: str) -> LinkRules:
    """`current` with the fields at `paths` (relative to LinkRules, e.g. `utm.source`) taken from `incoming`."""
    mask = field_mask_pb2.FieldMask(paths=list(paths))
    if not mask.IsValidForDescriptor(LinkRules.DESCRIPTOR):
        raise InvalidArgument.field(field, "names a field LinkRules does not have", reason="INVALID_UPDATE_MASK")
    out = LinkRules()
    out.CopyFrom(current)
    mask.MergeMessage(incoming, out, replace_message_field=True, replace_repeated_field=True)
    return out
