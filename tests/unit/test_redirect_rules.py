"""Compiled link rules: gate order, schedules across DST and midnight, routes, A/B splits and UTM."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from google.protobuf import timestamp_pb2

from qrmesh.qr.v1 import stored_qr_code_pb2 as pb
from qrmesh.redirect.domain import rules
from qrmesh.redirect.domain.privacy import sticky_bucket
from qrmesh.redirect.domain.rules import Decision, Visit, append_utm, compile_link
from qrmesh.scans.v1 import scan_event_pb2

Outcome = scan_event_pb2.ScanEvent
C = pb.RouteCondition
MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY, SATURDAY, SUNDAY = range(1, 8)
STOCKHOLM = ZoneInfo("Europe/Stockholm")
DESTINATION = "https://example.com/landing"
FALLBACK = "https://example.com/closed"
NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # a Wednesday


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def make_link(*, status: int = pb.QrCode.ACTIVE, redirect_status: int = 302, **rule_fields: Any) -> pb.Link:
    return pb.Link(
        short_code="abc1234",
        qr_code="organizations/o1/qrCodes/q1",
        organization="organizations/o1",
        status=status,  # type: ignore[arg-type]
        destination_url=DESTINATION,
        rules=pb.LinkRules(**rule_fields),
        password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        redirect_status=redirect_status,
        store_full_ip_addresses=True,
        version=7,
    )


def window(start: tuple[int, int], end: tuple[int, int], *days: int) -> pb.Schedule.Window:
    return pb.Schedule.Window(
        days=list(days),
        start_time={"hours": start[0], "minutes": start[1]},
        end_time={"hours": end[0], "minutes": end[1]},
    )


def schedule(*windows: pb.Schedule.Window, zone: str = "Europe/Stockholm") -> pb.Schedule:
    return pb.Schedule(time_zone=zone, windows=list(windows))


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A Stockholm wall-clock time as an aware UTC datetime."""
    return datetime(year, month, day, hour, minute, second, tzinfo=STOCKHOLM).astimezone(UTC)


def visit(
    *,
    now: datetime = NOW,
    os: int = 0,
    device: int = 0,
    country: str = "",
    languages: tuple[str, ...] = (),
    query: str = "",
    sticky: float = 0.5,
) -> Visit:
    return Visit(now=now, os=os, device_type=device, country=country, languages=languages, query=query, sticky=sticky)


def redirect(url: str, matched_rule: str = "", status: int = 302) -> Decision:
    return Decision(outcome=Outcome.REDIRECTED, status=status, url=url, page="", matched_rule=matched_rule)


def shown(kind: str, outcome: int, status: int) -> Decision:
    return Decision(outcome=outcome, status=status, url="", page=kind, matched_rule="")


def fallback(reason: str) -> Decision:
    return Decision(outcome=Outcome.FALLBACK, status=302, url=FALLBACK, page="", matched_rule=reason)


# ---------------------------------------------------------------- compile


def test_compiled_link_exposes_what_the_server_needs() -> None:
    link = compile_link(make_link(max_scans=100, redirect_status=308))
    assert link.short_code == "abc1234"
    assert link.qr_code == "organizations/o1/qrCodes/q1"
    assert link.organization == "organizations/o1"
    assert link.version == 7
    assert link.store_full_ip is True
    assert link.password_hash.startswith("$argon2id$")
    assert link.max_scans == 100
    assert link.redirect_status == 308


@pytest.mark.parametrize(("given", "used"), [(0, 302), (301, 301), (302, 302), (307, 307), (308, 308), (200, 302)])
def test_redirect_status(given: int, used: int) -> None:
    link = compile_link(make_link(redirect_status=given))
    assert link.redirect_status == used
    assert link.route(visit()) == redirect(DESTINATION, status=used)


# ---------------------------------------------------------------- gate


def test_an_active_link_without_rules_is_open() -> None:
    link = compile_link(make_link())
    assert link.gate(NOW) is None
    assert link.route(visit()) == redirect(DESTINATION)


def test_unspecified_status_is_active() -> None:
    assert compile_link(make_link(status=pb.QrCode.STATUS_UNSPECIFIED)).gate(NOW) is None


@pytest.mark.parametrize("status", [pb.QrCode.PAUSED, pb.QrCode.ARCHIVED])
def test_paused_and_archived_show_the_paused_page_never_the_fallback(status: int) -> None:
    expected = shown("paused", Outcome.PAUSED, 403)
    assert compile_link(make_link(status=status)).gate(NOW) == expected
    assert compile_link(make_link(status=status, fallback_url=FALLBACK)).gate(NOW) == expected


def test_not_before() -> None:
    start = NOW + timedelta(hours=1)
    link = compile_link(make_link(not_before=stamp(start)))
    assert link.gate(NOW) == shown("not_yet_active", Outcome.NOT_YET_ACTIVE, 403)
    assert link.gate(start - timedelta(microseconds=1)) is not None
    assert link.gate(start) is None
    with_fallback = compile_link(make_link(not_before=stamp(start), fallback_url=FALLBACK))
    assert with_fallback.gate(NOW) == fallback("not_yet_active")


def test_not_after() -> None:
    end = NOW - timedelta(hours=1)
    link = compile_link(make_link(not_after=stamp(end)))
    assert link.gate(NOW) == shown("expired", Outcome.EXPIRED, 410)
    assert link.gate(end) == shown("expired", Outcome.EXPIRED, 410)
    assert link.gate(end - timedelta(microseconds=1)) is None
    with_fallback = compile_link(make_link(not_after=stamp(end), fallback_url=FALLBACK))
    assert with_fallback.gate(NOW) == fallback("expired")


def test_not_after_keeps_nanoseconds_to_the_microsecond() -> None:
    end = timestamp_pb2.Timestamp(seconds=int(NOW.timestamp()), nanos=500_000_000)
    link = compile_link(make_link(not_after=end))
    assert link.gate(NOW + timedelta(milliseconds=499)) is None
    assert link.gate(NOW + timedelta(milliseconds=500)) is not None


def test_gate_order_status_then_time_then_schedule() -> None:
    closed_now = schedule(window((0, 0), (0, 1), SUNDAY))
    everything: dict[str, Any] = {
        "not_before": stamp(NOW + timedelta(days=1)),
        "not_after": stamp(NOW - timedelta(days=1)),
        "schedule": closed_now,
    }
    assert compile_link(make_link(status=pb.QrCode.PAUSED, **everything)).gate(NOW) == shown(
        "paused", Outcome.PAUSED, 403
    )
    assert compile_link(make_link(**everything)).gate(NOW) == shown("not_yet_active", Outcome.NOT_YET_ACTIVE, 403)
    del everything["not_before"]
    assert compile_link(make_link(**everything)).gate(NOW) == shown("expired", Outcome.EXPIRED, 410)
    del everything["not_after"]
    assert compile_link(make_link(**everything)).gate(NOW) == shown("unavailable", Outcome.OUTSIDE_SCHEDULE, 403)
    with_fallback = compile_link(make_link(schedule=closed_now, fallback_url=FALLBACK))
    assert with_fallback.gate(NOW) == fallback("outside_schedule")


def test_limit_reached() -> None:
    assert compile_link(make_link(max_scans=5)).limit_reached() == shown("limit_reached", Outcome.LIMIT_REACHED, 410)
    assert compile_link(make_link(max_scans=5, fallback_url=FALLBACK)).limit_reached() == fallback("limit_reached")


def test_fallback_is_a_temporary_redirect_without_utm_even_for_permanent_links() -> None:
    link = compile_link(
        make_link(
            redirect_status=301,
            not_after=stamp(NOW - timedelta(days=1)),
            fallback_url=FALLBACK,
            utm=pb.Utm(source="qr"),
        )
    )
    assert link.gate(NOW) == fallback("expired")


# ---------------------------------------------------------------- schedules


def office_hours() -> rules.CompiledLink:
    return compile_link(
        make_link(schedule=schedule(window((9, 0), (17, 0), MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY)))
    )


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        (local(2026, 6, 8, 8, 59, 59), False),  # Monday
        (local(2026, 6, 8, 9, 0), True),
        (local(2026, 6, 8, 16, 59, 59), True),
        (local(2026, 6, 8, 17, 0), False),
        (local(2026, 6, 12, 12, 0), True),  # Friday
        (local(2026, 6, 13, 12, 0), False),  # Saturday
        (local(2026, 6, 14, 12, 0), False),  # Sunday
    ],
)
def test_weekday_office_hours(moment: datetime, is_open: bool) -> None:
    assert (office_hours().gate(moment) is None) is is_open


def test_schedule_reads_the_zone_not_utc() -> None:
    link = office_hours()
    # 07:30 UTC is 09:30 in Stockholm in summer (UTC+2): open; 16:00 UTC is 18:00: closed.
    assert link.gate(datetime(2026, 6, 8, 7, 30, tzinfo=UTC)) is None
    assert link.gate(datetime(2026, 6, 8, 16, 0, tzinfo=UTC)) is not None
    # In winter (UTC+1) 07:30 UTC is 08:30: closed.
    assert link.gate(datetime(2026, 1, 12, 7, 30, tzinfo=UTC)) is not None
    assert link.gate(datetime(2026, 1, 12, 8, 0, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        (local(2026, 6, 12, 21, 59), False),  # Friday before
        (local(2026, 6, 12, 22, 0), True),
        (local(2026, 6, 12, 23, 59), True),
        (local(2026, 6, 13, 0, 0), True),  # Saturday morning: still Friday's window
        (local(2026, 6, 13, 1, 59), True),
        (local(2026, 6, 13, 2, 0), False),
        (local(2026, 6, 13, 23, 0), False),  # Saturday night: no window
        (local(2026, 6, 11, 23, 0), False),  # Thursday night
    ],
)
def test_window_over_midnight(moment: datetime, is_open: bool) -> None:
    link = compile_link(make_link(schedule=schedule(window((22, 0), (2, 0), FRIDAY))))
    assert (link.gate(moment) is None) is is_open


def test_sunday_night_window_wraps_into_monday() -> None:
    link = compile_link(make_link(schedule=schedule(window((23, 0), (1, 0), SUNDAY))))
    assert link.gate(local(2026, 6, 14, 23, 30)) is None  # Sunday
    assert link.gate(local(2026, 6, 15, 0, 30)) is None  # Monday
    assert link.gate(local(2026, 6, 15, 1, 0)) is not None
    assert link.gate(local(2026, 6, 14, 0, 30)) is not None  # Sunday early: Saturday had no window


def test_equal_start_and_end_is_a_whole_day_and_24_00_ends_a_day() -> None:
    whole_tuesday = compile_link(make_link(schedule=schedule(window((6, 0), (6, 0), TUESDAY))))
    assert whole_tuesday.gate(local(2026, 6, 9, 6, 0)) is None
    assert whole_tuesday.gate(local(2026, 6, 10, 5, 59)) is None
    assert whole_tuesday.gate(local(2026, 6, 10, 6, 0)) is not None
    evening = compile_link(make_link(schedule=schedule(window((18, 0), (24, 0), TUESDAY))))
    assert evening.gate(local(2026, 6, 9, 23, 59, 59)) is None
    assert evening.gate(local(2026, 6, 10, 0, 0)) is not None


def test_windows_without_days_apply_every_day_and_windows_combine() -> None:
    link = compile_link(make_link(schedule=schedule(window((8, 0), (10, 0)), window((9, 0), (12, 0), SATURDAY))))
    for day in range(8, 15):
        assert link.gate(local(2026, 6, day, 8, 30)) is None
        assert link.gate(local(2026, 6, day, 7, 59)) is not None
    assert link.gate(local(2026, 6, 13, 11, 0)) is None  # Saturday
    assert link.gate(local(2026, 6, 12, 11, 0)) is not None  # Friday


def test_a_schedule_open_all_week_or_without_windows_never_closes() -> None:
    always = compile_link(make_link(schedule=schedule(window((0, 0), (0, 0)))))
    empty = compile_link(make_link(schedule=pb.Schedule(time_zone="Europe/Stockholm")))
    for hour in range(0, 24 * 7, 5):
        moment = NOW + timedelta(hours=hour)
        assert always.gate(moment) is None
        assert empty.gate(moment) is None


def test_unknown_zone_is_read_as_utc() -> None:
    link = compile_link(make_link(schedule=schedule(window((9, 0), (17, 0)), zone="Mars/Olympus_Mons")))
    assert link.gate(datetime(2026, 6, 8, 9, 0, tzinfo=UTC)) is None
    assert link.gate(datetime(2026, 6, 8, 8, 59, tzinfo=UTC)) is not None
    utc = compile_link(make_link(schedule=schedule(window((9, 0), (17, 0)), zone="")))
    assert utc.gate(datetime(2026, 6, 8, 16, 59, tzinfo=UTC)) is None


def minutes(start: datetime, end: datetime) -> list[datetime]:
    count = int((end - start).total_seconds() // 60)
    return [start + timedelta(minutes=n) for n in range(count)]


def test_dst_spring_forward_in_stockholm() -> None:
    # 2026-03-29 (a Sunday): at 01:00 UTC the clocks jump from 02:00 CET to 03:00 CEST.
    assert datetime(2026, 3, 29, 0, 59, tzinfo=UTC).astimezone(STOCKHOLM).hour == 1
    assert datetime(2026, 3, 29, 1, 0, tzinfo=UTC).astimezone(STOCKHOLM).hour == 3

    skipped_hour = compile_link(make_link(schedule=schedule(window((2, 0), (3, 0)))))
    day = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # local midnight of the 29th
    assert not any(skipped_hour.gate(moment) is None for moment in minutes(day, day + timedelta(hours=23)))
    # The day before, the same window is open an hour (02:00-03:00 CET = 01:00-02:00 UTC).
    before = [m for m in minutes(day - timedelta(days=1), day) if skipped_hour.gate(m) is None]
    assert (before[0], len(before)) == (datetime(2026, 3, 28, 1, 0, tzinfo=UTC), 60)

    around = compile_link(make_link(schedule=schedule(window((1, 0), (4, 0), SUNDAY))))
    open_minutes = [m for m in minutes(day, day + timedelta(hours=23)) if around.gate(m) is None]
    # 01:00 CET to 04:00 CEST lasts two real hours that day.
    assert open_minutes[0] == datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    assert open_minutes[-1] == datetime(2026, 3, 29, 1, 59, tzinfo=UTC)
    assert len(open_minutes) == 120

    office = office_hours()
    monday = datetime(2026, 3, 30, 0, 0, tzinfo=UTC)
    assert office.gate(monday.replace(hour=6, minute=59)) is not None  # 08:59 CEST
    assert office.gate(monday.replace(hour=7)) is None  # 09:00 CEST
    friday = datetime(2026, 3, 27, 0, 0, tzinfo=UTC)
    assert office.gate(friday.replace(hour=7)) is not None  # 08:00 CET
    assert office.gate(friday.replace(hour=8)) is None  # 09:00 CET


def test_dst_fall_back_in_stockholm() -> None:
    # 2026-10-25 (a Sunday): at 01:00 UTC the clocks go back from 03:00 CEST to 02:00 CET.
    assert datetime(2026, 10, 25, 0, 30, tzinfo=UTC).astimezone(STOCKHOLM).hour == 2
    assert datetime(2026, 10, 25, 1, 30, tzinfo=UTC).astimezone(STOCKHOLM).hour == 2

    repeated_hour = compile_link(make_link(schedule=schedule(window((2, 0), (3, 0), SUNDAY))))
    day = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # local midnight of the 25th
    open_minutes = [m for m in minutes(day, day + timedelta(hours=25)) if repeated_hour.gate(m) is None]
    # 02:00-03:00 happens twice: 00:00-01:00 UTC (CEST) and 01:00-02:00 UTC (CET).
    assert open_minutes[0] == datetime(2026, 10, 25, 0, 0, tzinfo=UTC)
    assert open_minutes[-1] == datetime(2026, 10, 25, 1, 59, tzinfo=UTC)
    assert len(open_minutes) == 120

    office = office_hours()
    monday = datetime(2026, 10, 26, 0, 0, tzinfo=UTC)
    assert office.gate(monday.replace(hour=7, minute=59)) is not None  # 08:59 CET
    assert office.gate(monday.replace(hour=8)) is None  # 09:00 CET
    assert office.gate(monday.replace(hour=15, minute=59)) is None  # 16:59 CET
    assert office.gate(monday.replace(hour=16)) is not None  # 17:00 CET


# ---------------------------------------------------------------- routes


def route(url: str = "", name: str = "", split: list[pb.Route.Variant] | None = None, **when: Any) -> pb.Route:
    return pb.Route(name=name, url=url, split=split or [], when=C(**when))


def routed(*routes: pb.Route, **rule_fields: Any) -> rules.CompiledLink:
    return compile_link(make_link(routes=list(routes), **rule_fields))


def test_first_matching_route_wins_and_names_default_to_route_n() -> None:
    link = routed(
        route("https://a.example/ios", os=[C.IOS]),
        route("https://a.example/mobile", os=[C.IOS, C.ANDROID]),
        route("https://a.example/named", name="desktops", device_types=[C.DESKTOP]),
    )
    assert link.route(visit(os=C.IOS)) == redirect("https://a.example/ios", "route-1")
    assert link.route(visit(os=C.ANDROID)) == redirect("https://a.example/mobile", "route-2")
    assert link.route(visit(os=C.WINDOWS, device=C.DESKTOP)) == redirect("https://a.example/named", "desktops")
    assert link.route(visit(os=C.WINDOWS)) == redirect(DESTINATION)
    assert link.route(visit()) == redirect(DESTINATION)


def test_a_route_without_conditions_matches_everything() -> None:
    link = routed(route("https://a.example/only-se", countries=["SE"]), route("https://a.example/rest"))
    assert link.route(visit(country="SE")).url == "https://a.example/only-se"
    assert link.route(visit(country="US")) == redirect("https://a.example/rest", "route-2")
    assert link.route(visit()) == redirect("https://a.example/rest", "route-2")


def test_conditions_are_anded_and_list_values_ored() -> None:
    link = routed(
        route(
            "https://a.example/nordic-android-phones",
            os=[C.ANDROID],
            device_types=[C.MOBILE],
            countries=["SE", "no", " dk "],
            languages=["sv", "nb", "da"],
        )
    )
    good: dict[str, Any] = {"os": C.ANDROID, "device": C.MOBILE, "country": "SE", "languages": ("sv-se",)}
    assert link.route(visit(**good)).matched_rule == "route-1"
    assert link.route(visit(**{**good, "country": "NO", "languages": ("nb",)})).matched_rule == "route-1"
    assert link.route(visit(**{**good, "country": "DK", "languages": ("da",)})).matched_rule == "route-1"
    changes: list[dict[str, Any]] = [
        {"os": C.IOS},
        {"device": C.TABLET},
        {"country": "FI"},
        {"country": ""},
        {"languages": ("en", "sv")},
        {"languages": ()},
    ]
    for change in changes:
        assert link.route(visit(**{**good, **change})) == redirect(DESTINATION), change


def test_route_languages() -> None:
    link = routed(route("https://a.example/pt", languages=["pt"]), route("https://a.example/br", languages=["pt-BR"]))
    assert link.route(visit(languages=("pt-br", "en"))).url == "https://a.example/pt"
    only_brazil = routed(route("https://a.example/br", languages=["pt_BR"]))
    assert only_brazil.route(visit(languages=("pt-br",))).url == "https://a.example/br"
    assert only_brazil.route(visit(languages=("pt-pt",))).url == DESTINATION
    assert only_brazil.route(visit(languages=("pt",))).url == DESTINATION


def test_route_time_window() -> None:
    link = routed(
        route("https://a.example/lunch", time_window=schedule(window((11, 0), (14, 0), MONDAY, FRIDAY))),
        route("https://a.example/other"),
    )
    assert link.route(visit(now=local(2026, 6, 8, 12, 0))).url == "https://a.example/lunch"
    assert link.route(visit(now=local(2026, 6, 8, 14, 0))).url == "https://a.example/other"
    assert link.route(visit(now=local(2026, 6, 9, 12, 0))).url == "https://a.example/other"
    # The route's window does not close the link.
    assert link.gate(local(2026, 6, 9, 12, 0)) is None


@pytest.mark.parametrize(
    ("query", "poster", "any_ref"),
    [
        ("", False, False),
        ("src=poster", True, False),
        ("?src=flyer", True, False),
        ("src=web", False, False),
        ("a=1&src=po%73ter&b=2", True, False),
        ("SRC=poster", False, False),
        ("src=Poster", False, False),
        ("ref", False, True),
        ("ref=", False, True),
        ("x=1&ref=anything&src=flyer", True, True),
        ("referrer=1", False, False),
        ("src=web&src=poster", True, False),
    ],
)
def test_route_query_parameter(query: str, poster: bool, any_ref: bool) -> None:
    by_value = routed(
        route("https://a.example/p", query_parameter=C.QueryParameter(name="src", values=["poster", "flyer"]))
    )
    by_name = routed(route("https://a.example/r", query_parameter=C.QueryParameter(name="ref")))
    assert (by_value.route(visit(query=query)).url == "https://a.example/p") is poster
    assert (by_name.route(visit(query=query)).url == "https://a.example/r") is any_ref


def test_query_parameters_are_read_from_the_first_2048_characters() -> None:
    link = routed(route("https://a.example/r", query_parameter=C.QueryParameter(name="ref")))
    assert link.route(visit(query="x=" + "a" * 3000 + "&ref=1")).url == DESTINATION
    assert link.route(visit(query="ref=1&x=" + "a" * 3000)).url == "https://a.example/r"


def test_routes_without_a_destination_are_skipped_but_keep_their_number() -> None:
    link = routed(route(os=[C.IOS]), route("https://a.example/second", os=[C.IOS]))
    assert link.route(visit(os=C.IOS)) == redirect("https://a.example/second", "route-2")


def test_a_link_without_destination_shows_not_found() -> None:
    link = compile_link(pb.Link(short_code="abc1234", rules=pb.LinkRules(utm=pb.Utm(source="qr"))))
    assert link.route(visit()) == shown("unknown", Outcome.UNKNOWN_CODE, 404)
    split = compile_link(
        pb.Link(
            short_code="abc1234",
            rules=pb.LinkRules(routes=[route(split=[variant("", 1, "a"), variant("https://a.example/b", 1, "b")])]),
        )
    )
    assert split.route(visit(sticky=0.1)) == shown("unknown", Outcome.UNKNOWN_CODE, 404)
    assert split.route(visit(sticky=0.9)) == redirect("https://a.example/b", "route-1/b")


def test_decisions_are_built_once() -> None:
    link = routed(route("https://a.example/ios", os=[C.IOS]))
    assert link.route(visit(os=C.IOS)) is link.route(visit(os=C.IOS, country="SE"))
    assert link.route(visit()) is link.route(visit(country="SE"))


# ---------------------------------------------------------------- A/B splits


def variant(url: str, weight: int, name: str = "") -> pb.Route.Variant:
    return pb.Route.Variant(name=name, url=url, weight=weight)


def test_split_weights_distribute_visitors() -> None:
    link = routed(
        route(
            name="promo",
            split=[variant("https://a.example/a", 1, "a"), variant("https://a.example/b", 3), variant("", 4, "c")],
        )
    )
    rng = random.Random(20260610)  # noqa: S311 - reproducible test data
    counts: dict[str, int] = {}
    for _ in range(10_000):
        decision = link.route(visit(sticky=rng.random()))
        counts[decision.matched_rule] = counts.get(decision.matched_rule, 0) + 1
    assert set(counts) == {"promo/a", "promo/variant-2", "promo/c"}
    # Expected 1250 / 3750 / 5000; standard deviations are about 33, 48 and 50.
    assert abs(counts["promo/a"] - 1250) < 170
    assert abs(counts["promo/variant-2"] - 3750) < 250
    assert abs(counts["promo/c"] - 5000) < 250


def test_split_variants_and_edges() -> None:
    link = routed(route(split=[variant("https://a.example/a", 1), variant("https://a.example/b", 1)]))
    assert link.route(visit(sticky=0.0)) == redirect("https://a.example/a", "route-1/variant-1")
    assert link.route(visit(sticky=0.4999)) == redirect("https://a.example/a", "route-1/variant-1")
    assert link.route(visit(sticky=0.5)) == redirect("https://a.example/b", "route-1/variant-2")
    assert link.route(visit(sticky=0.999999)) == redirect("https://a.example/b", "route-1/variant-2")
    assert link.route(visit(sticky=1.0)) == redirect("https://a.example/b", "route-1/variant-2")


def test_unset_weights_count_as_one_and_a_variant_without_url_goes_to_the_destination() -> None:
    link = routed(route(split=[variant("", 0, "x"), variant("https://a.example/y", 0, "y")]))
    assert link.route(visit(sticky=0.25)) == redirect(DESTINATION, "route-1/x")
    assert link.route(visit(sticky=0.75)) == redirect("https://a.example/y", "route-1/y")


def test_split_is_sticky_per_visitor() -> None:
    link = routed(route(split=[variant("https://a.example/a", 1, "a"), variant("https://a.example/b", 1, "b")]))
    secret = b"k" * 32
    chosen = set()
    for n in range(200):
        ip = f"198.51.100.{n}"
        first = link.route(visit(sticky=sticky_bucket(secret, "abc1234", ip, "UA")))
        again = link.route(visit(sticky=sticky_bucket(secret, "abc1234", ip, "UA"), now=NOW + timedelta(days=30)))
        assert again is first
        chosen.add(first.matched_rule)
    assert chosen == {"route-1/a", "route-1/b"}


# ---------------------------------------------------------------- UTM


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com", "https://example.com?utm_source=qr%20poster&utm_medium=print"),
        ("https://example.com/a?x=1", "https://example.com/a?x=1&utm_source=qr%20poster&utm_medium=print"),
        ("https://example.com/a?x=1&", "https://example.com/a?x=1&utm_source=qr%20poster&utm_medium=print"),
        ("https://example.com/a?#top", "https://example.com/a?utm_source=qr%20poster&utm_medium=print#top"),
        (
            "https://example.com/a?x=1#part?y=2",
            "https://example.com/a?x=1&utm_source=qr%20poster&utm_medium=print#part?y=2",
        ),
        ("https://example.com/?utm_source=web", "https://example.com/?utm_source=web&utm_medium=print"),
        ("https://example.com/?utm_source=", "https://example.com/?utm_source=&utm_medium=print"),
        ("https://example.com/?utm%5Fsource=web&utm_medium=x", "https://example.com/?utm%5Fsource=web&utm_medium=x"),
    ],
)
def test_append_utm(url: str, expected: str) -> None:
    assert append_utm(url, (("utm_source", "qr poster"), ("utm_medium", "print"))) == expected


def test_append_utm_encodes_values() -> None:
    assert (
        append_utm("https://e.com/", (("utm_campaign", "spring/2026 & more"), ("utm_term", "café=1#x")))
        == "https://e.com/?utm_campaign=spring%2F2026%20%26%20more&utm_term=caf%C3%A9%3D1%23x"
    )
    assert append_utm("https://e.com/?a=1", ()) == "https://e.com/?a=1"


def test_utm_applies_to_every_destination() -> None:
    utm = pb.Utm(source="qr", medium="print", campaign="spring", term="", content="v1")
    link = routed(
        route("https://a.example/ios?utm_medium=app", os=[C.IOS]),
        route(split=[variant("https://a.example/a#x", 1, "a"), variant("https://a.example/b", 1, "b")]),
        utm=utm,
    )
    assert link.route(visit(os=C.IOS)).url == (
        "https://a.example/ios?utm_medium=app&utm_source=qr&utm_campaign=spring&utm_content=v1"
    )
    assert link.route(visit(sticky=0.1)).url == (
        "https://a.example/a?utm_source=qr&utm_medium=print&utm_campaign=spring&utm_content=v1#x"
    )
    no_routes = compile_link(make_link(utm=utm))
    assert no_routes.route(visit()) == redirect(
        DESTINATION + "?utm_source=qr&utm_medium=print&utm_campaign=spring&utm_content=v1"
    )


# ---------------------------------------------------------------- decisions for the server


def test_decisions_for_the_server_match_the_page_statuses() -> None:
    assert shown("unknown", Outcome.UNKNOWN_CODE, 404) == rules.UNKNOWN_CODE
    assert shown("password", Outcome.PASSWORD_REQUIRED, 200) == rules.PASSWORD_REQUIRED
    assert shown("password", Outcome.PASSWORD_REJECTED, 200) == rules.PASSWORD_REJECTED
    assert shown("throttled", Outcome.PASSWORD_THROTTLED, 429) == rules.PASSWORD_THROTTLED
