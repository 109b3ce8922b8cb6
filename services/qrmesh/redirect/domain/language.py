"""Accept-Language parsing and matching routes' languages."""

from __future__ import annotations

from functools import lru_cache

MAX_HEADER_LENGTH = 512
"""Longer headers are cut here (at the last complete entry)."""
MAX_LANGUAGES = 10
MAX_TAG_LENGTH = 35


def normalize_tag(tag: str) -> str:
    """A tag as compared: trimmed, lowercase, `_` read as `-` ("pt_BR" -> "pt-br")."""
    return tag.strip().lower().replace("_", "-")


def valid_tag(tag: str) -> bool:
    """Whether a normalized tag looks like BCP 47: letters, then `-`-separated alphanumeric subtags of 1 to 8."""
    if not tag or len(tag) > MAX_TAG_LENGTH or not tag.isascii():
        return False
    primary, *subtags = tag.split("-")
    if not (0 < len(primary) <= 8 and primary.isalpha()):
        return False
    return all(0 < len(subtag) <= 8 and subtag.isalnum() for subtag in subtags)


def _weight(params: list[str]) -> float | None:
    weight = 1.0
    for param in params:
        name, equals, value = param.partition("=")
        if name.strip().lower() != "q":
            continue  # Accept-Language has no other parameters; ignore them.
        if not equals:
            return None
        try:
            weight = float(value.strip())
        except ValueError:
            return None
        if not 0.0 <= weight <= 1.0:  # also refuses nan
            return None
    return weight


def preferred_languages(accept_language: str) -> tuple[str, ...]:
    """The tags of an Accept-Language header, lowercase, most preferred first (ties keep header order).

    Entries with q=0, the wildcard `*`, duplicates and malformed entries are
    dropped; at most 10 tags are returned; headers over 512 characters are cut
    at the last complete entry before that.
    """
    if len(accept_language) > MAX_HEADER_LENGTH:
        cut = accept_language[: MAX_HEADER_LENGTH + 1]
        accept_language = cut[: cut.rfind(",")] if "," in cut else ""
    return _parse(accept_language)


@lru_cache(maxsize=4096)
def _parse(header: str) -> tuple[str, ...]:
    weighted: list[tuple[float, str]] = []
    for entry in header.split(","):
        tag, *params = entry.split(";")
        tag = normalize_tag(tag)
        if tag == "*" or not valid_tag(tag):
            continue
        weight = _weight(params) if params else 1.0
        if weight is None or weight == 0.0:
            continue
        weighted.append((weight, tag))
    weighted.sort(key=lambda item: -item[0])  # stable: ties keep their order
    seen: dict[str, None] = {}
    for _, tag in weighted:
        seen.setdefault(tag, None)
        if len(seen) == MAX_LANGUAGES:
            break
    return tuple(seen)


def matches(wanted: frozenset[str], preferred: tuple[str, ...]) -> bool:
    """Whether a route's languages (`wanted`, normalized) accept a visitor with `preferred` languages.

    Only the visitor's most preferred language counts, so a Swedish visitor
    who also reads English is routed as Swedish. It matches when it is one of
    `wanted` or its primary subtag is: "pt" accepts "pt-br" and "pt-pt";
    "pt-br" accepts "pt-br" only (not "pt" nor "pt-pt"). A visitor without
    languages matches nothing.
    """
    if not preferred:
        return False
    top = preferred[0]
    if top in wanted:
        return True
    primary, dash, _ = top.partition("-")
    return bool(dash) and primary in wanted
