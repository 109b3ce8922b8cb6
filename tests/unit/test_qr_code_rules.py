"""Rules of stored QR codes without I/O: link rules, short codes, labels, update masks, listings, scan entries."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from google.protobuf import timestamp_pb2

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr import store
from qrmesh.qr.domain import labels, listing, shortcodes
from qrmesh.qr.domain.link_rules import is_time_zone, merge_rules, normalize_rules, redirect_status
from qrmesh.qr.domain.updates import CHANGEABLE, password_change, plan_scan_settings_update, plan_update
from qrmesh.qr.link_publisher import link_from_row
from qrmesh.qr.scan_totals import counts_for
from qrmesh.qr.v1 import qr_code_pb2, stored_qr_code_pb2
from qrmesh.scans.v1 import scan_event_pb2

LinkRules = stored_qr_code_pb2.LinkRules
Schedule = stored_qr_code_pb2.Schedule
Route = stored_qr_code_pb2.Route
Condition = stored_qr_code_pb2.RouteCondition
FIELD = "qrCode.rules"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def window(
    start: tuple[int, int] = (9, 0), end: tuple[int, int] = (17, 0), days: tuple[int, ...] = ()
) -> Schedule.Window:
    result = Schedule.Window(days=list(days))
    result.start_time.hours, result.start_time.minutes = start
    result.end_time.hours, result.end_time.minutes = end
    return result


def problems(rules: LinkRules) -> tuple[str, list[str]]:
    """(reason, fields) of the InvalidArgument `rules` are refused with."""
    with pytest.raises(InvalidArgument) as caught:
        normalize_rules(rules, field=FIELD)
    return caught.value.reason, [violation.field for violation in caught.value.violations]


# ---------------------------------------------------------------- link rules


def test_valid_rules_are_kept_in_canonical_form() -> None:
    route = Route(
        when=Condition(
            countries=[" se", "SE", "No"],
            languages=["pt-BR", "EN", "en"],
            os=[Condition.IOS, Condition.IOS, Condition.ANDROID],
            time_window=Schedule(time_zone="Europe/Stockholm", windows=[window(days=(5, 1, 5))]),
        ),
        split=[Route.Variant(url="https://a.example"), Route.Variant(url="https://b.example", weight=3)],
    )
    rules = LinkRules(
        not_before=timestamp_pb2.Timestamp(seconds=1_800_000_000),
        not_after=timestamp_pb2.Timestamp(seconds=1_900_000_000),
        password="secret",
        password_protected=True,
        max_scans=10,
        routes=[route, Route(name="fallback", url="https://c.example")],
    )
    out = normalize_rules(rules, field=FIELD)
    when = out.routes[0].when
    assert list(when.countries) == ["SE", "NO"]
    assert list(when.languages) == ["pt-br", "en"]
    assert list(when.os) == [Condition.IOS, Condition.ANDROID]
    assert list(when.time_window.windows[0].days) == [1, 5]
    assert [(v.name, v.weight) for v in out.routes[0].split] == [("a", 1), ("b", 3)]
    assert [r.name for r in out.routes] == ["route-1", "fallback"]
    assert (out.password, out.password_protected, out.max_scans) == ("secret", False, 10)
    assert list(rules.routes[0].when.countries) == [" se", "SE", "No"], "the input is not changed"


def test_time_range_must_move_forward() -> None:
    moment = timestamp_pb2.Timestamp(seconds=1_800_000_000)
    assert problems(LinkRules(not_before=moment, not_after=moment)) == ("INVALID_TIME_RANGE", [f"{FIELD}.notAfter"])
    assert problems(LinkRules(not_after=timestamp_pb2.Timestamp(seconds=300_000_000_000)))[0] == "INVALID_TIME"


@pytest.mark.parametrize("password", ["abc", "x" * 129])
def test_password_length(password: str) -> None:
    assert problems(LinkRules(password=password)) == ("INVALID_PASSWORD", [f"{FIELD}.password"])


def test_password_bounds_are_allowed() -> None:
    assert normalize_rules(LinkRules(password="abcd"), field=FIELD).password == "abcd"
    assert normalize_rules(LinkRules(password="x" * 128), field=FIELD).password == "x" * 128


@pytest.mark.parametrize(
    ("zone", "valid"),
    [
        ("UTC", True),
        ("Europe/Stockholm", True),
        ("America/Argentina/Buenos_Aires", True),
        ("Etc/GMT+5", True),
        ("Mars/Olympus", False),
        ("europe/stockholm", False),
        ("../etc/passwd", False),
        ("/etc/localtime", False),
        ("Europe/", False),
        ("x" * 70, False),
    ],
)
def test_time_zones(zone: str, valid: bool) -> None:
    assert is_time_zone(zone) is valid


def test_schedule_windows_are_checked() -> None:
    late = window(start=(24, 0), end=(24, 0))
    bad_minute = window(start=(9, 60))
    missing = Schedule.Window()
    unknown_day = window(days=(0,))
    schedule = Schedule(time_zone="Nowhere/Land", windows=[window(end=(24, 0)), late, bad_minute, missing, unknown_day])
    reason, fields = problems(LinkRules(schedule=schedule))
    assert reason == "INVALID_TIME_ZONE"
    path = f"{FIELD}.schedule"
    assert fields == [
        f"{path}.timeZone",
        f"{path}.windows[1].startTime",
        f"{path}.windows[2].startTime",
        f"{path}.windows[3].startTime",
        f"{path}.windows[3].endTime",
        f"{path}.windows[4].days",
    ]


def test_overnight_window_is_allowed() -> None:
    out = normalize_rules(LinkRules(schedule=Schedule(windows=[window(start=(22, 0), end=(2, 0))])), field=FIELD)
    assert out.schedule.windows[0].end_time.hours == 2


@pytest.mark.parametrize(
    ("route", "field"),
    [
        (Route(), "routes[0]"),
        (Route(url="https://a.example", split=[Route.Variant(url="https://b.example")] * 2), "routes[0]"),
        (Route(split=[Route.Variant(url="https://b.example")]), "routes[0].split"),
        (
            Route(split=[Route.Variant(name="x", url="https://a.example"), Route.Variant(name="x", url="https://b")]),
            "routes[0].split[1].name",
        ),
        (Route(url="https://a.example", when=Condition(os=[Condition.OS_UNSPECIFIED])), "routes[0].when.os"),
        (
            Route(url="https://a.example", when=Condition(device_types=[Condition.DeviceType.ValueType(9)])),
            "routes[0].when.deviceTypes",
        ),
    ],
)
def test_routes_need_exactly_one_destination(route: Route, field: str) -> None:
    assert problems(LinkRules(routes=[route])) == ("INVALID_ROUTE", [f"{FIELD}.{field}"])


@pytest.mark.parametrize("country", ["S", "SWE", "S1", "ÅÄ", ""])
def test_countries_are_two_ascii_letters(country: str) -> None:
    rules = LinkRules(routes=[Route(url="https://a.example", when=Condition(countries=[country]))])
    assert problems(rules) == ("INVALID_COUNTRY", [f"{FIELD}.routes[0].when.countries[0]"])


@pytest.mark.parametrize("language", ["english", "e", "pt_BR", "pt-", "-BR", "zh-Hant-TW-x-" + "y" * 30])
def test_languages_are_tags(language: str) -> None:
    rules = LinkRules(routes=[Route(url="https://a.example", when=Condition(languages=[language]))])
    assert problems(rules) == ("INVALID_LANGUAGE", [f"{FIELD}.routes[0].when.languages[0]"])


def test_every_problem_is_reported_at_once() -> None:
    rules = LinkRules(
        password="no",
        routes=[Route(), Route(url="https://a.example", when=Condition(countries=["SWE"], languages=["?"]))],
    )
    reason, fields = problems(rules)
    assert reason == "INVALID_PASSWORD"
    assert fields == [
        f"{FIELD}.password",
        f"{FIELD}.routes[0]",
        f"{FIELD}.routes[1].when.countries[0]",
        f"{FIELD}.routes[1].when.languages[0]",
    ]


def test_merge_rules_takes_only_the_masked_fields() -> None:
    current = LinkRules(
        max_scans=5, fallback_url="https://old.example", utm=stored_qr_code_pb2.Utm(source="a", medium="b")
    )
    incoming = LinkRules(max_scans=9, fallback_url="https://new.example", utm=stored_qr_code_pb2.Utm(source="z"))
    merged = merge_rules(current, incoming, ["max_scans", "utm.source"], field="updateMask")
    assert (merged.max_scans, merged.fallback_url, merged.utm.source, merged.utm.medium) == (
        9,
        "https://old.example",
        "z",
        "b",
    )
    with pytest.raises(InvalidArgument) as caught:
        merge_rules(current, incoming, ["nope"], field="updateMask")
    assert caught.value.reason == "INVALID_UPDATE_MASK"


def test_redirect_status() -> None:
    assert [redirect_status(name) for name in ("FOUND", "MOVED_PERMANENTLY", "TEMPORARY_REDIRECT")] == [302, 301, 307]
    assert (redirect_status("PERMANENT_REDIRECT"), redirect_status("REDIRECT_TYPE_UNSPECIFIED")) == (308, 302)


# ---------------------------------------------------------------- update masks


def test_empty_mask_changes_every_changeable_field() -> None:
    for paths in ([], ["*"]):
        plan = plan_update(paths)
        assert plan.fields == frozenset(CHANGEABLE)
        assert plan.whole_rules


def test_rule_subpaths() -> None:
    plan = plan_update(["display_name", "rules.max_scans", "rules.utm.source", "rules.max_scans"])
    assert plan.fields == {"display_name", "rules"}
    assert plan.rules_paths == ("max_scans", "utm.source")
    assert not plan.whole_rules
    assert not plan.password_named
    assert plan_update(["rules", "rules.max_scans"]).whole_rules


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("kind", "IMMUTABLE_FIELD"),
        ("short_code", "IMMUTABLE_FIELD"),
        ("etag", "IMMUTABLE_FIELD"),
        ("scan_count", "IMMUTABLE_FIELD"),
        ("rules.password_protected", "IMMUTABLE_FIELD"),
        ("displayName", "INVALID_UPDATE_MASK"),
        ("content.url", "INVALID_UPDATE_MASK"),
        ("owner", "INVALID_UPDATE_MASK"),
    ],
)
def test_masks_that_are_refused(path: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_update([path])
    assert caught.value.reason == reason
    assert caught.value.violations[0].field == "updateMask"


@pytest.mark.parametrize(
    ("paths", "password", "change"),
    [
        (["display_name"], "new", "keep"),
        (["rules"], "new", "set"),
        (["rules"], "", "keep"),
        ([], "", "keep"),
        ([], "new", "set"),
        (["rules.password"], "new", "set"),
        (["rules.password"], "", "clear"),
        (["rules", "rules.password"], "", "clear"),
        (["rules.max_scans"], "new", "keep"),
        (["rules.max_scans"], "", "keep"),
    ],
)
def test_password_changes(paths: list[str], password: str, change: str) -> None:
    assert password_change(plan_update(paths), password) == change


def test_scan_settings_mask() -> None:
    plan_scan_settings_update([])
    plan_scan_settings_update(["store_full_ip_addresses"])
    for path, reason in (("update_time", "IMMUTABLE_FIELD"), ("retention", "INVALID_UPDATE_MASK")):
        with pytest.raises(InvalidArgument) as caught:
            plan_scan_settings_update([path])
        assert caught.value.reason == reason


# ---------------------------------------------------------------- short codes


def test_random_short_codes() -> None:
    codes = {shortcodes.random_short_code() for _ in range(500)}
    assert len(codes) == 500
    assert all(re.fullmatch(r"[0-9A-Za-z]{7}", code) for code in codes)
    assert {len(shortcodes.random_short_code(9)) for _ in range(5)} == {9}
    assert len(set("".join(codes))) > 55, "the whole alphabet is used"


def test_codes_grow_after_repeated_collisions() -> None:
    lengths = list(shortcodes.candidate_lengths())
    assert lengths[:4] == [7, 7, 7, 8]
    assert lengths == sorted(lengths)
    assert lengths[-1] == shortcodes.MAX_RANDOM_LENGTH


@pytest.mark.parametrize("word", ["api", "API", "Admin", "v1", "docs", "healthz", "Login", "static", "WWW", "r"])
def test_reserved_words(word: str) -> None:
    assert shortcodes.is_reserved(word)


def test_aliases() -> None:
    assert shortcodes.check_alias("Spring-Sale_2026", field="f") == "Spring-Sale_2026"
    for alias, reason in (
        ("Admin", "SHORT_CODE_RESERVED"),
        ("-abc", "INVALID_SHORT_CODE"),
        ("ab", "INVALID_SHORT_CODE"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            shortcodes.check_alias(alias, field="f")
        assert caught.value.reason == reason
    assert shortcodes.short_url("https://qr.example/", "Ab3") == "https://qr.example/r/Ab3"


# ---------------------------------------------------------------- labels


def test_tags_keep_their_spelling_and_compare_without_case() -> None:
    assert labels.normalize_tags([" Print ", "summer"], field="tags") == ("Print", "summer")
    for tags, reason in (
        (["Print", "PRINT"], "DUPLICATE_TAG"),
        (["ß", "SS"], "DUPLICATE_TAG"),
        ([""], "INVALID_TAG"),
        (["x" * 51], "INVALID_TAG"),
        (["a\nb"], "INVALID_TAG"),
        ([str(i) for i in range(21)], "INVALID_TAG"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            labels.normalize_tags(tags, field="tags")
        assert caught.value.reason == reason, tags


def test_folders() -> None:
    assert labels.normalize_folder("/campaigns/2026/", field="folder") == "campaigns/2026"
    assert labels.normalize_folder("", field="folder") == ""
    for folder in ("a//b", "a/ b", "a\tb"):
        with pytest.raises(InvalidArgument):
            labels.normalize_folder(folder, field="folder")


# ---------------------------------------------------------------- listings


def test_orders() -> None:
    assert listing.parse_order("") == listing.Order("create_time", True)
    assert listing.parse_order("create_time") == listing.Order("create_time", False)
    assert listing.parse_order("scan_count desc") == listing.Order("scan_count", True)
    assert listing.parse_order("display_name asc") == listing.Order("display_name", False)
    with pytest.raises(InvalidArgument):
        listing.parse_order("name")


def test_pages_stop_before_they_grow_too_large() -> None:
    assert listing.fitting([10] * 5, 3, budget=100) == 3
    assert listing.fitting([10] * 2, 3, budget=100) == 2
    assert listing.fitting([40, 40, 40, 40], 10, budget=100) == 2
    assert listing.fitting([500, 1], 10, budget=100) == 1
    assert listing.fitting([], 10, budget=100) == 0


def test_like_patterns_match_literally() -> None:
    assert listing.like_pattern("50%_off\\") == "%50\\%\\_off\\\\%"


def test_page_tokens_are_bound_to_their_listing() -> None:
    order = listing.Order("display_name", False)
    filters = listing.normalize_filters(folder="/a/", tag=" Print ", kind=None, status=None, search="x")
    assert (filters.folder, filters.tag) == ("a", "print")
    scope = listing.scope("org", filters, order)
    token = listing.encode_page_token(listing.Cursor("alpha", "abc"), scope)
    assert listing.decode_page_token(token, scope, order) == listing.Cursor("alpha", "abc")
    assert listing.decode_page_token("", scope, order) is None
    other = listing.scope("org", listing.normalize_filters("a", "print", "STATIC", None, "x"), order)
    for bad_token, bad_scope, bad_order in (
        (token, other, order),
        (token, scope, listing.Order("scan_count", False)),
        ("not-base64!", scope, order),
    ):
        with pytest.raises(InvalidArgument) as caught:
            listing.decode_page_token(bad_token, bad_scope, bad_order)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert listing.from_micros(listing.micros(moment)) == moment
    assert (listing.page_size(0), listing.page_size(7), listing.page_size(1000)) == (50, 7, 100)


# ---------------------------------------------------------------- links and scan entries


def _record(**overrides: object) -> store.QrCodeRecord:
    values: dict[str, object] = {
        "id": "aaaaaaaaaaaaaaaa",
        "organization_id": "bbbbbbbbbbbbbbbb",
        "display_name": "",
        "kind": "DYNAMIC",
        "content": qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="https://example.com")).SerializeToString(),
        "design": b"",
        "folder": "",
        "tags": (),
        "status": "PAUSED",
        "short_code": "Abc1234",
        "rules": LinkRules(fallback_url="https://example.com/closed").SerializeToString(),
        "password_hash": "$argon2id$hash",
        "max_scans": 4,
        "claimed_scans": 1,
        "redirect_type": "TEMPORARY_REDIRECT",
        "scan_count": 0,
        "revision": 3,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(overrides)
    return store.QrCodeRecord(**values)  # type: ignore[arg-type]


def test_link_from_a_stored_code() -> None:
    link = link_from_row(store.LinkRow("Abc1234", 7, _record(), store_full_ip_addresses=True))
    assert link is not None
    assert (link.short_code, link.version, link.redirect_status) == ("Abc1234", 7, 307)
    assert (link.qr_code, link.organization) == (
        "organizations/bbbbbbbbbbbbbbbb/qrCodes/aaaaaaaaaaaaaaaa",
        "organizations/bbbbbbbbbbbbbbbb",
    )
    assert (link.status, link.destination_url) == (stored_qr_code_pb2.QrCode.PAUSED, "https://example.com")
    assert (link.rules.max_scans, link.rules.password_protected, link.rules.password) == (4, True, "")
    assert (link.password_hash, link.store_full_ip_addresses) == ("$argon2id$hash", True)
    assert link_from_row(store.LinkRow("Abc1234", 8, None, store_full_ip_addresses=False)) is None


def test_scan_entries_that_count() -> None:
    name = "organizations/bbbbbbbbbbbbbbbb/qrCodes/aaaaaaaaaaaaaaaa"
    event = scan_event_pb2.ScanEvent

    def entry(entry_id: str, **fields: object) -> tuple[str, dict[bytes, bytes]]:
        message = event(qr_code=name, outcome=event.REDIRECTED)
        for key, value in fields.items():
            setattr(message, key, value)
        return entry_id, {b"event": message.SerializeToString()}

    entries = [
        entry("1-0", event_id="e1"),
        entry("2-0"),
        entry("3-0", event_id="e3", bot=True),
        entry("4-0", event_id="e4", outcome=event.LIMIT_REACHED),
        entry("5-0", event_id="e5", qr_code=""),
        entry("6-0", event_id="e6", qr_code="organizations/x/qrCodes/y"),
        ("7-0", {b"event": b"\xff\xff"}),
        ("8-0", {b"other": b""}),
    ]
    assert counts_for(entries) == [
        store.ScanCount("bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa", ("e1", "stream:2-0")),
    ]
