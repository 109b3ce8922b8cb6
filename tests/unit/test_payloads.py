"""Payload encoders: exact texts per standard, refusals with field paths, and independent parsers reading the output."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import icalendar
import pytest
import vobject
from google.protobuf.timestamp_pb2 import Timestamp

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.content import payload_from_proto
from qrmesh.qr.domain.payloads import (
    Bitcoin,
    Email,
    Epc,
    Event,
    Geo,
    MeCard,
    Payload,
    Phone,
    Sms,
    Swish,
    SwishEditable,
    Text,
    Url,
    VCard,
    VCardAddress,
    VCardPhone,
    VCardPhoneType,
    WhatsApp,
    Wifi,
    WifiSecurity,
    encode,
    required_error_correction,
)
from qrmesh.qr.v1 import qr_code_pb2 as pb


def refused(payload: Payload) -> InvalidArgument:
    """The InvalidArgument that encoding `payload` raises."""
    with pytest.raises(InvalidArgument) as caught:
        encode(payload)
    return caught.value


def assert_refused(payload: Payload, field: str, reason: str) -> None:
    """Encoding `payload` fails on `field` with `reason`, and the message names the field."""
    error = refused(payload)
    assert error.reason == reason
    assert [v.field for v in error.violations] == [field]
    assert error.message.startswith(f"{field}: ")


def zxing_fields(text: str, prefix: str) -> list[tuple[str, str]]:
    """Split a WIFI:/MECARD: text the way ZXing reads it: `;` ends a field unless escaped, `\\x` is a literal x."""
    assert text.startswith(prefix)
    assert text.endswith(";;")
    fields: list[tuple[str, str]] = []
    current, escaped = "", False
    for char in text[len(prefix) : -1]:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ";":
            key, _, value = current.partition(":")
            fields.append((key, value))
            current = ""
        else:
            current += char
    assert current == ""
    return fields


# ---------------------------------------------------------------------------
# url, text
# ---------------------------------------------------------------------------


def test_url_and_text_are_encoded_as_is() -> None:
    assert encode(Url("https://example.com/a?b=c d")) == "https://example.com/a?b=c d"
    assert encode(Text("Grüße; a:b,c\nnext")) == "Grüße; a:b,c\nnext"


# ---------------------------------------------------------------------------
# email
# ---------------------------------------------------------------------------


def test_email_with_subject_and_body() -> None:
    text = encode(Email("info@example.com", subject="Hello there & welcome", body="Line one\nLine two"))
    assert text == "mailto:info@example.com?subject=Hello%20there%20%26%20welcome&body=Line%20one%0D%0ALine%20two"


def test_email_omits_empty_parameters() -> None:
    assert encode(Email("a@example.com")) == "mailto:a@example.com"
    assert encode(Email("a@example.com", body="x")) == "mailto:a@example.com?body=x"
    assert encode(Email("a@example.com", subject="x")) == "mailto:a@example.com?subject=x"


def test_email_encodes_utf8_and_reserved_characters() -> None:
    text = encode(Email("åsa+tag@exämple.se", subject="Hej då? 50% #1", body="a\r\nb\rc=d"))
    assert text == (
        "mailto:%C3%A5sa+tag@ex%C3%A4mple.se?subject=Hej%20d%C3%A5%3F%2050%25%20%231&body=a%0D%0Ab%0D%0Ac%3Dd"
    )
    parts = urlsplit(text)
    assert parts.scheme == "mailto"
    assert unquote(parts.path) == "åsa+tag@exämple.se"
    query = parse_qs(parts.query)
    assert query == {"subject": ["Hej då? 50% #1"], "body": ["a\r\nb\r\nc=d"]}


@pytest.mark.parametrize("address", ["a,b@example.com", "a@b@example.com", "a b@example.com", "a@-example.com", "a@x"])
def test_email_refuses_what_is_not_an_address(address: str) -> None:
    assert_refused(Email(address), "content.email.to", "INVALID_EMAIL")


def test_email_subject_must_be_one_line() -> None:
    assert_refused(Email("a@example.com", subject="a\nb"), "content.email.subject", "LINE_BREAK_NOT_ALLOWED")


# ---------------------------------------------------------------------------
# phone, sms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+46 70-123 45 67", "tel:+46701234567"),
        ("0046 70 123 45 67", "tel:+46701234567"),
        ("+46 (0)70 123 45 67", "tel:+46701234567"),
        ("+1 (555) 123.4567", "tel:+15551234567"),
        ("(555) 123-4567", "tel:5551234567"),
        ("070-123 45 67", "tel:0701234567"),
        ("112", "tel:112"),
        ("+123456789012345", "tel:+123456789012345"),
    ],
)
def test_phone_is_normalized(number: str, expected: str) -> None:
    assert encode(Phone(number)) == expected


@pytest.mark.parametrize(
    "number",
    ["call me", "+46 70 123 45 6x", "12", "+1234567890123456", "+0123456789", "++46701234567", "46+701234567", "١٢٣٤٥"],
)
def test_phone_refuses_what_is_not_a_number(number: str) -> None:
    assert_refused(Phone(number), "content.phone.number", "INVALID_PHONE_NUMBER")


def test_sms_keeps_the_message_verbatim_after_the_number() -> None:
    assert encode(Sms("+46 70 123 45 67", "Hej: vi ses 18:00; ok?")) == "SMSTO:+46701234567:Hej: vi ses 18:00; ok?"
    assert encode(Sms("0701234567")) == "SMSTO:0701234567:"
    assert_refused(Sms("abc", "x"), "content.sms.number", "INVALID_PHONE_NUMBER")


# ---------------------------------------------------------------------------
# wifi
# ---------------------------------------------------------------------------


def test_wifi_wpa() -> None:
    assert encode(Wifi("Home", "correct horse", WifiSecurity.WPA)) == "WIFI:T:WPA;S:Home;P:correct horse;;"


def test_wifi_unspecified_security_follows_the_password() -> None:
    assert encode(Wifi("Home", "password1")) == "WIFI:T:WPA;S:Home;P:password1;;"
    assert encode(Wifi("Lobby")) == "WIFI:T:nopass;S:Lobby;;"


def test_wifi_hidden_only_when_hidden() -> None:
    assert encode(Wifi("Home", "password1", hidden=True)) == "WIFI:T:WPA;S:Home;P:password1;H:true;;"
    assert "H:" not in encode(Wifi("Home", "password1", hidden=False))


def test_wifi_escapes_every_special_character() -> None:
    ssid, password = 'a\\b;c,d:e"f', 'p;a,s:s"\\w'
    text = encode(Wifi(ssid, password, WifiSecurity.WPA))
    assert text == 'WIFI:T:WPA;S:a\\\\b\\;c\\,d\\:e\\"f;P:p\\;a\\,s\\:s\\"\\\\w;;'
    assert zxing_fields(text, "WIFI:") == [("T", "WPA"), ("S", ssid), ("P", password)]


@pytest.mark.parametrize(
    ("ssid", "expected"),
    [
        ("CAFE", '"CAFE"'),
        ("Cafe", '"Cafe"'),
        ("00", '"00"'),
        ("deadBEEF", '"deadBEEF"'),
        ("ABC", "ABC"),
        ("CAFEX", "CAFEX"),
    ],
)
def test_wifi_quotes_an_ssid_that_looks_like_hex(ssid: str, expected: str) -> None:
    assert encode(Wifi(ssid)) == f"WIFI:T:nopass;S:{expected};;"


def test_wifi_quotes_a_passphrase_that_looks_like_hex() -> None:
    assert encode(Wifi("Home", "12345678")) == 'WIFI:T:WPA;S:Home;P:"12345678";;'


def test_wifi_raw_hex_keys_stay_unquoted() -> None:
    psk = "0123456789abcdef" * 4
    assert encode(Wifi("Home", psk, WifiSecurity.WPA)) == f"WIFI:T:WPA;S:Home;P:{psk};;"
    assert encode(Wifi("Old", "0123456789", WifiSecurity.WEP)) == "WIFI:T:WEP;S:Old;P:0123456789;;"
    assert encode(Wifi("Old", "A" * 26, WifiSecurity.WEP)) == f"WIFI:T:WEP;S:Old;P:{'A' * 26};;"


def test_wifi_wep_ascii_keys() -> None:
    assert encode(Wifi("Old", "ab;cd", WifiSecurity.WEP)) == "WIFI:T:WEP;S:Old;P:ab\\;cd;;"
    assert encode(Wifi("Old", "x" * 13, WifiSecurity.WEP)) == f"WIFI:T:WEP;S:Old;P:{'x' * 13};;"


@pytest.mark.parametrize("key", ["abcd", "abcdef", "0123456789a", "x" * 10, "é" * 5])
def test_wifi_refuses_wep_keys_of_the_wrong_length(key: str) -> None:
    assert_refused(Wifi("Old", key, WifiSecurity.WEP), "content.wifi.password", "INVALID_WEP_KEY")


@pytest.mark.parametrize("password", ["short", "x" * 64, "lösenord123", "tab\there1"])
def test_wifi_refuses_bad_wpa_passphrases(password: str) -> None:
    assert_refused(Wifi("Home", password, WifiSecurity.WPA), "content.wifi.password", "INVALID_WPA_PASSPHRASE")


def test_wifi_wpa_passphrase_limits() -> None:
    assert encode(Wifi("H", "x" * 8)) == f"WIFI:T:WPA;S:H;P:{'x' * 8};;"
    assert encode(Wifi("H", "x" * 63)) == f"WIFI:T:WPA;S:H;P:{'x' * 63};;"


@pytest.mark.parametrize("security", [WifiSecurity.WPA, WifiSecurity.WEP, WifiSecurity.WPA2_EAP])
def test_wifi_password_required_unless_open(security: WifiSecurity) -> None:
    assert_refused(Wifi("Home", "", security, eap_method="PEAP"), "content.wifi.password", "PASSWORD_REQUIRED")


def test_wifi_open_network_refuses_a_password() -> None:
    assert_refused(Wifi("Cafe", "secret123", WifiSecurity.NOPASS), "content.wifi.password", "PASSWORD_NOT_ALLOWED")


def test_wifi_ssid_is_limited_to_32_bytes() -> None:
    assert encode(Wifi("é" * 16)) == f"WIFI:T:nopass;S:{'é' * 16};;"
    assert_refused(Wifi("é" * 16 + "a"), "content.wifi.ssid", "SSID_TOO_LONG")


def test_wifi_enterprise() -> None:
    text = encode(
        Wifi(
            "Corp",
            "s3cr;t",
            WifiSecurity.WPA2_EAP,
            hidden=True,
            eap_method="peap",
            identity="jane@corp.example",
            anonymous_identity="anon",
            phase2_method="mschapv2",
        )
    )
    assert text == "WIFI:T:WPA2-EAP;S:Corp;P:s3cr\\;t;E:PEAP;A:anon;I:jane@corp.example;PH2:MSCHAPV2;H:true;;"
    fields = dict(zxing_fields(text, "WIFI:"))
    assert fields["P"] == "s3cr;t"
    assert fields["H"] == "true"


def test_wifi_enterprise_password_is_never_quoted() -> None:
    text = encode(Wifi("Corp", "deadbeef", WifiSecurity.WPA2_EAP, eap_method="TTLS", identity="cafe"))
    assert text == "WIFI:T:WPA2-EAP;S:Corp;P:deadbeef;E:TTLS;I:cafe;;"


def test_wifi_enterprise_needs_an_eap_method() -> None:
    assert_refused(Wifi("Corp", "pw", WifiSecurity.WPA2_EAP), "content.wifi.eapMethod", "EAP_METHOD_REQUIRED")


def test_wifi_eap_fields_only_with_enterprise_security() -> None:
    assert_refused(Wifi("Home", "password1", identity="jane"), "content.wifi.identity", "EAP_ONLY")


# ---------------------------------------------------------------------------
# vCard
# ---------------------------------------------------------------------------

FULL_CARD = VCard(
    first_name="Anna",
    last_name="Svensson",
    organization="Acme AB",
    title="CTO",
    phones=(VCardPhone("+46 70 123 45 67", VCardPhoneType.CELL), VCardPhone("08-123 456")),
    emails=("anna@acme.example",),
    urls=("https://acme.example/",),
    address=VCardAddress(street="Storgatan 1", city="Malmö", postal_code="211 34", country="Sweden"),
    note="Met at PyCon",
    birthday="1990-04-25",
)


def test_vcard_3() -> None:
    assert encode(FULL_CARD) == (
        "BEGIN:VCARD\r\n"
        "VERSION:3.0\r\n"
        "N:Svensson;Anna;;;\r\n"
        "FN:Anna Svensson\r\n"
        "ORG:Acme AB\r\n"
        "TITLE:CTO\r\n"
        "TEL;TYPE=CELL:+46701234567\r\n"
        "TEL:08123456\r\n"
        "EMAIL:anna@acme.example\r\n"
        "URL:https://acme.example/\r\n"
        "ADR:;;Storgatan 1;Malmö;;211 34;Sweden\r\n"
        "NOTE:Met at PyCon\r\n"
        "BDAY:1990-04-25\r\n"
        "END:VCARD\r\n"
    )


def test_vcard_4() -> None:
    card = VCard(
        version=4,
        first_name="Anna",
        last_name="Svensson",
        phones=(VCardPhone("+46 70 123 45 67", VCardPhoneType.CELL), VCardPhone("08-123 456", VCardPhoneType.FAX)),
        birthday="1990-04-25",
    )
    assert encode(card) == (
        "BEGIN:VCARD\r\n"
        "VERSION:4.0\r\n"
        "N:Svensson;Anna;;;\r\n"
        "FN:Anna Svensson\r\n"
        "TEL;TYPE=cell;VALUE=uri:tel:+46701234567\r\n"
        "TEL;TYPE=fax:08123456\r\n"
        "BDAY:19900425\r\n"
        "END:VCARD\r\n"
    )


def test_vcard_version_0_means_3_and_others_are_refused() -> None:
    assert "\r\nVERSION:3.0\r\n" in encode(VCard(version=0, first_name="A"))
    assert_refused(VCard(version=2, first_name="A"), "content.vcard.version", "UNSUPPORTED_VCARD_VERSION")


def test_vcard_organization_only() -> None:
    text = encode(VCard(organization="Acme; Inc, Ltd"))
    assert "\r\nN:;;;;\r\nFN:Acme\\; Inc\\, Ltd\r\nORG:Acme\\; Inc\\, Ltd\r\n" in text


def test_vcard_needs_a_name_or_organization() -> None:
    assert_refused(VCard(title="CTO", first_name="  "), "content.vcard.firstName", "NAME_REQUIRED")


def test_vcard_refusals_name_the_item() -> None:
    phones = (VCardPhone("+46701234567"), VCardPhone("not a number"))
    assert_refused(VCard(first_name="A", phones=phones), "content.vcard.phones[1].number", "INVALID_PHONE_NUMBER")
    assert_refused(VCard(first_name="A", emails=("a@b.se", "nope")), "content.vcard.emails[1]", "INVALID_EMAIL")
    assert_refused(VCard(first_name="A", urls=("javascript:x",)), "content.vcard.urls[0]", "INVALID_URL")
    assert_refused(VCard(first_name="A", birthday="1990-02-30"), "content.vcard.birthday", "INVALID_DATE")
    assert_refused(VCard(first_name="A", birthday="19900425"), "content.vcard.birthday", "INVALID_DATE")


def test_vcard_lines_end_in_crlf() -> None:
    text = encode(FULL_CARD)
    assert text.endswith("END:VCARD\r\n")
    assert "\n" not in text.replace("\r\n", "")
    assert "\r" not in text.replace("\r\n", "")


def test_vcard_omits_empty_address() -> None:
    assert "ADR" not in encode(VCard(first_name="A", address=VCardAddress()))
    assert "\r\nADR:;;;;;;SE\r\n" in encode(VCard(first_name="A", address=VCardAddress(country="SE")))


@pytest.mark.parametrize("version", [3, 4])
def test_vcard_reads_back_with_vobject(version: int) -> None:
    card = VCard(
        version=version,
        first_name='Åsa "Ace"; Jr',
        last_name="Öberg, Wallin\\",
        organization="Bröd & Co; AB",
        title="Chief\nBaker",
        phones=(VCardPhone("+46 70 123 45 67", VCardPhoneType.WORK), VCardPhone("08 123 456", VCardPhoneType.HOME)),
        emails=("asa@bröd.example",),
        urls=("https://bröd.example/a,b?c=d;e",),
        address=VCardAddress(street="Storgatan 1;\nPlan 2", city="Malmö, Skåne", region="Skåne", country="Sverige"),
        note="Line 1\nLine 2, with; all \\ kinds",
        birthday="1990-04-25",
    )
    parsed = vobject.readOne(encode(card))
    assert parsed.version.value == f"{version}.0"
    assert parsed.n.value.family == "Öberg, Wallin\\"
    assert parsed.n.value.given == 'Åsa "Ace"; Jr'
    assert parsed.fn.value == 'Åsa "Ace"; Jr Öberg, Wallin\\'
    assert parsed.org.value == ["Bröd & Co; AB"]
    assert parsed.title.value == "Chief\nBaker"
    tels = [(tel.value, tel.params["TYPE"]) for tel in parsed.tel_list]
    if version == 3:
        assert tels == [("+46701234567", ["WORK"]), ("08123456", ["HOME"])]
    else:
        assert tels == [("tel:+46701234567", ["work"]), ("08123456", ["home"])]
    assert parsed.email.value == "asa@bröd.example"
    assert parsed.url.value == "https://bröd.example/a,b?c=d;e"
    assert parsed.adr.value.street == "Storgatan 1;\nPlan 2"
    assert parsed.adr.value.city == "Malmö, Skåne"
    assert parsed.adr.value.region == "Skåne"
    assert parsed.adr.value.country == "Sverige"
    assert parsed.note.value == "Line 1\nLine 2, with; all \\ kinds"
    assert parsed.bday.value == ("1990-04-25" if version == 3 else "19900425")


# ---------------------------------------------------------------------------
# MECARD
# ---------------------------------------------------------------------------


def test_mecard() -> None:
    card = MeCard(
        name="Doe,John",
        reading="ドウ,ジョン",
        phones=("+1 (555) 123-4567", "555 0100"),
        emails=("john@example.com",),
        url="https://example.com",
        address="1 Main St; Springfield",
        note='Say "hi"',
        birthday="1990-04-25",
        nickname="JD",
    )
    assert encode(card) == (
        "MECARD:N:Doe,John;SOUND:ドウ,ジョン;TEL:+15551234567;TEL:5550100;EMAIL:john@example.com;"
        'URL:https\\://example.com;ADR:1 Main St\\; Springfield;NOTE:Say \\"hi\\";BDAY:19900425;NICKNAME:JD;;'
    )


def test_mecard_minimal_and_escaped_name() -> None:
    assert encode(MeCard(name="Prince")) == "MECARD:N:Prince;;"
    text = encode(MeCard(name="O;Brien, Pat: Jr, III", note="a\\b"))
    assert text == "MECARD:N:O\\;Brien,Pat\\: Jr\\, III;NOTE:a\\\\b;;"
    assert zxing_fields(text, "MECARD:") == [("N", "O;Brien,Pat: Jr, III"), ("NOTE", "a\\b")]


def test_mecard_refusals() -> None:
    assert_refused(MeCard(name="A", phones=("1", "x")), "content.mecard.phones[0]", "INVALID_PHONE_NUMBER")
    assert_refused(MeCard(name="A", emails=("a@b.se", "@b.se")), "content.mecard.emails[1]", "INVALID_EMAIL")
    assert_refused(MeCard(name="A", birthday="2001-13-01"), "content.mecard.birthday", "INVALID_DATE")
    assert_refused(MeCard(name=" "), "content.mecard.name", "NAME_REQUIRED")


# ---------------------------------------------------------------------------
# geo
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geo", "expected"),
    [
        (Geo(59.3293, 18.0686), "geo:59.3293,18.0686"),
        (Geo(-33.8688, 151.2093, 58.0), "geo:-33.8688,151.2093,58"),
        (Geo(12.123456789, -98.76543219), "geo:12.1234568,-98.7654322"),
        (Geo(-0.0, -0.0), "geo:0,0"),
        (Geo(-0.00000001, 0.00000004), "geo:0,0"),
        (Geo(0.0000001, 1e-5), "geo:0.0000001,0.00001"),
        (Geo(90.0, 45.0), "geo:90,0"),
        (Geo(-90.0, -180.0), "geo:-90,0"),
        (Geo(0.0, 180.0), "geo:0,180"),
        (Geo(0.0, -180.0), "geo:0,-180"),
        (Geo(1.0, 2.0, -10994.25), "geo:1,2,-10994.25"),
        (Geo(1.0, 2.0, 0.0), "geo:1,2,0"),
        (Geo(1.0, 2.0, 100000.0), "geo:1,2,100000"),
    ],
)
def test_geo(geo: Geo, expected: str) -> None:
    text = encode(geo)
    assert text == expected
    assert "e" not in text.removeprefix("geo:")


@pytest.mark.parametrize(
    ("geo", "field"),
    [
        (Geo(90.000001, 0.0), "content.geo.latitude"),
        (Geo(-91.0, 0.0), "content.geo.latitude"),
        (Geo(float("nan"), 0.0), "content.geo.latitude"),
        (Geo(0.0, 180.5), "content.geo.longitude"),
        (Geo(0.0, float("-inf")), "content.geo.longitude"),
        (Geo(0.0, 0.0, float("inf")), "content.geo.altitude"),
    ],
)
def test_geo_refuses_out_of_range(geo: Geo, field: str) -> None:
    assert_refused(geo, field, "OUT_OF_RANGE")


# ---------------------------------------------------------------------------
# event
# ---------------------------------------------------------------------------

START = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
UID = re.compile(r"UID:[0-9a-f]{32}@qrmesh")


def event_lines(text: str) -> list[str]:
    """The lines of an iCalendar text, checking every line ends in CRLF."""
    assert text.endswith("\r\n")
    lines = text[:-2].split("\r\n")
    assert all("\n" not in line and "\r" not in line for line in lines)
    return lines


def test_timed_event() -> None:
    event = Event("Standup", START, START + timedelta(minutes=90), location="Room 4", description="Daily")
    lines = event_lines(encode(event))
    assert UID.fullmatch(lines[4])
    assert lines[:4] + lines[5:] == [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//qrmesh//QR//EN",
        "BEGIN:VEVENT",
        "DTSTAMP:20260501T100000Z",
        "DTSTART:20260501T100000Z",
        "DTEND:20260501T113000Z",
        "SUMMARY:Standup",
        "LOCATION:Room 4",
        "DESCRIPTION:Daily",
        "END:VEVENT",
        "END:VCALENDAR",
    ]


def test_timed_event_is_written_in_utc_and_lasts_an_hour_by_default() -> None:
    from zoneinfo import ZoneInfo

    local = datetime(2026, 1, 15, 9, 30, 15, 999_000, tzinfo=ZoneInfo("America/New_York"))
    lines = event_lines(encode(Event("Call", local, time_zone="America/New_York")))
    assert "DTSTART:20260115T143015Z" in lines
    assert "DTEND:20260115T153015Z" in lines
    assert "DTSTAMP:20260115T143015Z" in lines


def test_event_is_deterministic() -> None:
    event = Event("Launch", START, description="x")
    assert encode(event) == encode(Event("Launch", START, description="x"))
    uids = {
        next(line for line in event_lines(encode(e)) if line.startswith("UID:"))
        for e in (event, Event("Launch!", START, description="x"), Event("Launch", START + timedelta(seconds=1)))
    }
    assert len(uids) == 3


def test_all_day_event_end_is_exclusive() -> None:
    one_day = event_lines(encode(Event("Holiday", START, all_day=True)))
    assert "DTSTART;VALUE=DATE:20260501" in one_day
    assert "DTEND;VALUE=DATE:20260502" in one_day
    three_days = event_lines(encode(Event("Trip", START, START + timedelta(days=2, hours=5), all_day=True)))
    assert "DTSTART;VALUE=DATE:20260501" in three_days
    assert "DTEND;VALUE=DATE:20260504" in three_days
    assert "DTSTAMP:20260501T100000Z" in three_days


def test_all_day_dates_are_taken_in_the_time_zone() -> None:
    late_utc = datetime(2026, 5, 1, 22, 30, tzinfo=UTC)  # already 2 May in Stockholm (UTC+2)
    lines = event_lines(encode(Event("Party", late_utc, all_day=True, time_zone="Europe/Stockholm")))
    assert "DTSTART;VALUE=DATE:20260502" in lines
    assert "DTEND;VALUE=DATE:20260503" in lines
    utc_lines = event_lines(encode(Event("Party", late_utc, all_day=True)))
    assert "DTSTART;VALUE=DATE:20260501" in utc_lines


def test_event_end_before_start_is_refused() -> None:
    assert_refused(Event("X", START, START - timedelta(seconds=1)), "content.event.end", "END_BEFORE_START")
    day_before = START - timedelta(days=1)
    assert_refused(Event("X", START, day_before, all_day=True), "content.event.end", "END_BEFORE_START")


def test_zero_length_event_is_allowed() -> None:
    assert "DTEND:20260501T100000Z" in event_lines(encode(Event("Moment", START, START)))


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "Europe/", "utc+2"])
def test_event_unknown_time_zone_is_refused(zone: str) -> None:
    assert_refused(Event("X", START, time_zone=zone), "content.event.timeZone", "UNKNOWN_TIME_ZONE")


def test_event_reads_back_with_icalendar() -> None:
    event = Event(
        "Fika, kaffe; kaka \\ mer",
        START,
        START + timedelta(hours=2),
        location="Café Åby; floor 2, room 3",
        description="Bring:\n- cups\r\n- milk",
    )
    calendar = icalendar.Calendar.from_ical(encode(event))
    assert str(calendar["VERSION"]) == "2.0"
    assert str(calendar["PRODID"]) == "-//qrmesh//QR//EN"
    [vevent] = calendar.walk("VEVENT")
    assert str(vevent["SUMMARY"]) == "Fika, kaffe; kaka \\ mer"
    assert str(vevent["LOCATION"]) == "Café Åby; floor 2, room 3"
    assert str(vevent["DESCRIPTION"]) == "Bring:\n- cups\n- milk"
    assert vevent.decoded("DTSTART") == START
    assert vevent.decoded("DTEND") == START + timedelta(hours=2)
    assert vevent.decoded("DTSTAMP") == START
    assert str(vevent["UID"]).endswith("@qrmesh")


def test_all_day_event_reads_back_with_icalendar() -> None:
    text = encode(Event("Midsummer", datetime(2026, 6, 19, 8, tzinfo=UTC), all_day=True, time_zone="Europe/Stockholm"))
    [vevent] = icalendar.Calendar.from_ical(text).walk("VEVENT")
    assert vevent.decoded("DTSTART") == date(2026, 6, 19)
    assert vevent.decoded("DTEND") == date(2026, 6, 20)


# ---------------------------------------------------------------------------
# EPC
# ---------------------------------------------------------------------------

IBAN = "DE71110220330123456789"


def test_epc_full() -> None:
    epc = Epc(
        name="Franz Mustermänn",
        iban="de71 1102 2033 0123 4567 89",
        bic="bhbldehhxxx",
        amount="12.3",
        purpose="gdds",
        reference="RF18 5390 0754 7034",
        information="Danke",
    )
    assert encode(epc) == (
        "BCD\n002\n1\nSCT\nBHBLDEHHXXX\nFranz Mustermänn\nDE71110220330123456789\n"
        "EUR12.30\nGDDS\nRF18539007547034\n\nDanke"
    )


def test_epc_minimal_drops_trailing_empty_lines() -> None:
    assert encode(Epc("Red Cross", IBAN)) == f"BCD\n002\n1\nSCT\n\nRed Cross\n{IBAN}"
    assert encode(Epc("Red Cross", IBAN, text="Donation")) == f"BCD\n002\n1\nSCT\n\nRed Cross\n{IBAN}\n\n\n\nDonation"


def test_epc_lines_sit_where_the_spec_says() -> None:
    text = encode(Epc("Shop", "NL91 ABNA 0417 1643 00", amount="7", purpose="CHAR", text="Order 42", information="Hi"))
    lines = text.split("\n")
    assert len(lines) == 12
    service, version, charset, identification, bic, name, iban, amount, purpose, reference, remittance, info = lines
    assert (service, version, charset, identification) == ("BCD", "002", "1", "SCT")
    assert bic == ""
    assert name == "Shop"
    assert iban == "NL91ABNA0417164300"
    assert amount == "EUR7.00"
    assert purpose == "CHAR"
    assert reference == ""
    assert remittance == "Order 42"
    assert info == "Hi"


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("0.01", "EUR0.01"), ("999999999.99", "EUR999999999.99"), ("007", "EUR7.00"), ("12.5", "EUR12.50")],
)
def test_epc_amount(amount: str, expected: str) -> None:
    assert encode(Epc("A", IBAN, amount=amount)).split("\n")[7] == expected


@pytest.mark.parametrize("amount", ["0", "0.00", "0.001"])
def test_epc_amount_below_a_cent_is_refused(amount: str) -> None:
    assert_refused(Epc("A", IBAN, amount=amount), "content.epc.amount", "INVALID_AMOUNT")


@pytest.mark.parametrize(
    "iban",
    [
        "DE71110220330123456788",  # checksum off by one digit
        "DE17110220330123456789",  # check digits swapped
        "DE7111022033012345678",  # one character short for Germany
        "NO938601111794",  # Norway has 15 characters
        "GB82 WEST 1234 5698 7654 3",  # one short
        "12DE110220330123456789",
        "DE71 1102 2033 0123 4567 8!",
    ],
)
def test_epc_refuses_bad_ibans(iban: str) -> None:
    assert_refused(Epc("A", iban), "content.epc.iban", "INVALID_IBAN")


@pytest.mark.parametrize(
    ("iban", "normalized"),
    [
        ("NO93 8601 1117 947", "NO9386011117947"),
        ("gb82 west 1234 5698 7654 32", "GB82WEST12345698765432"),
        ("MT84MALT011000012345MTLCAST001S", "MT84MALT011000012345MTLCAST001S"),
        ("XX83 1234 5678 9012 3456", "XX831234567890123456"),  # no length known for XX: 15 to 34
    ],
)
def test_epc_accepts_and_normalizes_ibans(iban: str, normalized: str) -> None:
    assert encode(Epc("A", iban)).split("\n")[6] == normalized


def test_epc_reference_and_text_are_exclusive() -> None:
    assert_refused(
        Epc("A", IBAN, reference="RF18539007547034", text="x"), "content.epc.reference", "EPC_REFERENCE_AND_TEXT"
    )


def test_epc_creditor_reference_checksum() -> None:
    assert_refused(Epc("A", IBAN, reference="RF19539007547034"), "content.epc.reference", "INVALID_CREDITOR_REFERENCE")
    assert_refused(Epc("A", IBAN, reference="RF18"), "content.epc.reference", "INVALID_CREDITOR_REFERENCE")
    assert encode(Epc("A", IBAN, reference="rf18 5390 0754 7034")).split("\n")[9] == "RF18539007547034"
    assert encode(Epc("A", IBAN, reference="123456789")).split("\n")[9] == "123456789"


def test_epc_refuses_line_breaks_inside_fields() -> None:
    assert_refused(Epc("A\nB", IBAN), "content.epc.name", "LINE_BREAK_NOT_ALLOWED")
    assert_refused(Epc("A", IBAN, information="x\ny"), "content.epc.information", "LINE_BREAK_NOT_ALLOWED")


def largest_epc(information_length: int) -> Epc:
    """An EPC payload of 271 bytes plus the information line."""
    return Epc(
        name="N" * 70,
        iban=IBAN,
        bic="BHBLDEHHXXX",
        amount="999999999.99",
        purpose="GDDS",
        text="T" * 128,
        information="I" * information_length,
    )


def test_epc_331_bytes_is_accepted_and_332_refused() -> None:
    text = encode(largest_epc(60))
    assert len(text.encode()) == 331
    assert text.split("\n")[-1] == "I" * 60
    error = refused(largest_epc(61))
    assert error.reason == "PAYLOAD_TOO_LONG"
    assert [v.field for v in error.violations] == ["content.epc"]
    assert "332" in error.message


def test_epc_limit_counts_utf8_bytes() -> None:
    name = "Ö" * 70  # 70 characters, 140 bytes
    base = 14 + 1 + 140 + 1 + len(IBAN)  # header, empty BIC, name, IBAN
    fits = Epc(name, IBAN, text="t" * (331 - base - 4))  # three empty lines before the text
    assert len(encode(fits).encode()) == 331
    assert refused(Epc(name, IBAN, text="t" * (332 - base - 4))).reason == "PAYLOAD_TOO_LONG"


def test_epc_requires_error_correction_m() -> None:
    assert required_error_correction(Epc("A", IBAN)) == "M"
    assert required_error_correction(Url("https://example.com")) is None
    assert required_error_correction(Wifi("x")) is None


# ---------------------------------------------------------------------------
# Swish
# ---------------------------------------------------------------------------


def test_swish() -> None:
    text = encode(Swish("123 456 78 90", "100.5", "Faktura 12; tack/åäö"))
    assert text == "C1234567890;100,50;Faktura%2012%3B%20tack%2F%C3%A5%C3%A4%C3%B6;0"


@pytest.mark.parametrize(
    ("editable", "mask"),
    [
        (SwishEditable(), 0),
        (SwishEditable(payee=True), 1),
        (SwishEditable(amount=True), 2),
        (SwishEditable(payee=True, amount=True), 3),
        (SwishEditable(message=True), 4),
        (SwishEditable(payee=True, message=True), 5),
        (SwishEditable(amount=True, message=True), 6),
        (SwishEditable(payee=True, amount=True, message=True), 7),
    ],
)
def test_swish_lock_mask_sets_a_bit_per_editable_field(editable: SwishEditable, mask: int) -> None:
    assert encode(Swish("1234567890", "10", "x", editable)) == f"C1234567890;10,00;x;{mask}"


@pytest.mark.parametrize(
    ("payee", "normalized"),
    [
        ("123-456 78 90", "1234567890"),
        ("070-123 45 67", "0701234567"),
        ("+46 70 123 45 67", "46701234567"),
        ("0046701234567", "46701234567"),
        ("900 80 04", "9008004"),
    ],
)
def test_swish_payee_is_normalized(payee: str, normalized: str) -> None:
    assert encode(Swish(payee)) == f"C{normalized};;;0"


@pytest.mark.parametrize("payee", ["08-123 456 78", "12345", "1234567890123", "+47 70 123 45 67", "07012345ab"])
def test_swish_refuses_other_payees(payee: str) -> None:
    assert_refused(Swish(payee), "content.swish.payee", "INVALID_SWISH_PAYEE")


@pytest.mark.parametrize(("amount", "expected"), [("100", "100,00"), ("100,5", "100,50"), ("0.01", "0,01")])
def test_swish_amount_uses_a_decimal_comma(amount: str, expected: str) -> None:
    assert encode(Swish("1234567890", amount)) == f"C1234567890;{expected};;0"


def test_swish_zero_amount_is_refused() -> None:
    assert_refused(Swish("1234567890", "0,00"), "content.swish.amount", "INVALID_AMOUNT")


# ---------------------------------------------------------------------------
# Bitcoin
# ---------------------------------------------------------------------------


def test_bitcoin() -> None:
    text = encode(Bitcoin("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "20.30", "Luke-Jr", "Donation for project xyz"))
    assert (
        text
        == "bitcoin:1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa?amount=20.3&label=Luke-Jr&message=Donation%20for%20project%20xyz"
    )


@pytest.mark.parametrize(
    "address",
    [
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        "BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ",
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
    ],
)
def test_bitcoin_accepts_valid_addresses(address: str) -> None:
    assert encode(Bitcoin(address)) == f"bitcoin:{address}"


@pytest.mark.parametrize(
    "address",
    [
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb",  # base58 checksum broken
        "1A1zP1eP5QGefi2DMPTfTL5SLmv7Divf0a",  # 0 is not base58
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdz",  # bech32 checksum broken
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzWF5MDQ",  # mixed case
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj1",  # bech32m checksum broken
        "ltc1qabcdefghijklmnopqrstuvwxyz0123",
    ],
)
def test_bitcoin_refuses_invalid_addresses(address: str) -> None:
    assert_refused(Bitcoin(address), "content.bitcoin.address", "INVALID_BITCOIN_ADDRESS")


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("0.00150000", "0.0015"), ("20", "20"), ("100", "100"), ("0.00000001", "0.00000001"), ("21000000", "21000000")],
)
def test_bitcoin_amount_has_no_exponent(amount: str, expected: str) -> None:
    address = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    assert encode(Bitcoin(address, amount)) == f"bitcoin:{address}?amount={expected}"


@pytest.mark.parametrize("amount", ["0", "0.00000000", "21000000.00000001", "99999999"])
def test_bitcoin_refuses_impossible_amounts(amount: str) -> None:
    address = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    assert_refused(Bitcoin(address, amount), "content.bitcoin.amount", "INVALID_AMOUNT")


def test_bitcoin_percent_encodes_label_and_message() -> None:
    text = encode(Bitcoin("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", label="Åsa & Co", message="a=b?c#d+e"))
    assert text.endswith("?label=%C3%85sa%20%26%20Co&message=a%3Db%3Fc%23d%2Be")
    assert parse_qs(urlsplit(text).query) == {"label": ["Åsa & Co"], "message": ["a=b?c#d+e"]}


# ---------------------------------------------------------------------------
# WhatsApp
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "message", "expected"),
    [
        ("+46 70 123 45 67", "", "https://wa.me/46701234567"),
        ("0046 70-123 45 67", "Hej där!", "https://wa.me/46701234567?text=Hej%20d%C3%A4r%21"),
        ("1 (555) 123-4567", "a&b", "https://wa.me/15551234567?text=a%26b"),
    ],
)
def test_whatsapp(number: str, message: str, expected: str) -> None:
    assert encode(WhatsApp(number, message)) == expected


@pytest.mark.parametrize("number", ["070 123 45 67", "+46 70 abc", "+0701234567", "12345"])
def test_whatsapp_needs_an_international_number(number: str) -> None:
    assert_refused(WhatsApp(number), "content.whatsapp.number", "INVALID_PHONE_NUMBER")


# ---------------------------------------------------------------------------
# proto translation
# ---------------------------------------------------------------------------


def stamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    result = Timestamp()
    result.FromDatetime(moment)
    return result


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (pb.Content(url=pb.UrlPayload(url="https://x.example")), Url("https://x.example")),
        (pb.Content(text=pb.TextPayload(text="hi")), Text("hi")),
        (pb.Content(email=pb.EmailPayload(to="a@b.se", subject="s", body="b")), Email("a@b.se", "s", "b")),
        (pb.Content(phone=pb.PhonePayload(number="112")), Phone("112")),
        (pb.Content(sms=pb.SmsPayload(number="112", message="m")), Sms("112", "m")),
        (
            pb.Content(
                wifi=pb.WifiPayload(
                    ssid="s",
                    password="p",
                    security=pb.WifiPayload.WPA2_EAP,
                    hidden=True,
                    eap_method="PEAP",
                    identity="i",
                    anonymous_identity="a",
                    phase2_method="MSCHAPV2",
                )
            ),
            Wifi("s", "p", WifiSecurity.WPA2_EAP, True, "PEAP", "i", "a", "MSCHAPV2"),
        ),
        (pb.Content(wifi=pb.WifiPayload(ssid="s", security=pb.WifiPayload.NOPASS)), Wifi("s", "", WifiSecurity.NOPASS)),
        (pb.Content(wifi=pb.WifiPayload(ssid="s")), Wifi("s")),
        (pb.Content(wifi=pb.WifiPayload(ssid="s", security=pb.WifiPayload.WEP)), Wifi("s", "", WifiSecurity.WEP)),
        (pb.Content(wifi=pb.WifiPayload(ssid="s", security=pb.WifiPayload.WPA)), Wifi("s", "", WifiSecurity.WPA)),
        (
            pb.Content(
                vcard=pb.VCardPayload(
                    version=4,
                    first_name="F",
                    last_name="L",
                    organization="O",
                    title="T",
                    phones=[
                        pb.VCardPayload.Phone(number="1", type=pb.VCardPayload.Phone.CELL),
                        pb.VCardPayload.Phone(number="2", type=pb.VCardPayload.Phone.WORK),
                        pb.VCardPayload.Phone(number="3", type=pb.VCardPayload.Phone.HOME),
                        pb.VCardPayload.Phone(number="4", type=pb.VCardPayload.Phone.FAX),
                        pb.VCardPayload.Phone(number="5"),
                    ],
                    emails=["e@x.se"],
                    urls=["https://u.se"],
                    address=pb.VCardPayload.Address(street="S", city="C", region="R", postal_code="P", country="K"),
                    note="N",
                    birthday="2000-01-02",
                )
            ),
            VCard(
                4,
                "F",
                "L",
                "O",
                "T",
                (
                    VCardPhone("1", VCardPhoneType.CELL),
                    VCardPhone("2", VCardPhoneType.WORK),
                    VCardPhone("3", VCardPhoneType.HOME),
                    VCardPhone("4", VCardPhoneType.FAX),
                    VCardPhone("5", VCardPhoneType.UNSPECIFIED),
                ),
                ("e@x.se",),
                ("https://u.se",),
                VCardAddress("S", "C", "R", "P", "K"),
                "N",
                "2000-01-02",
            ),
        ),
        (pb.Content(vcard=pb.VCardPayload(first_name="F")), VCard(0, "F")),
        (
            pb.Content(
                mecard=pb.MeCardPayload(
                    name="N",
                    reading="R",
                    phones=["1", "2"],
                    emails=["e@x.se"],
                    url="U",
                    address="A",
                    note="O",
                    birthday="2000-01-02",
                    nickname="K",
                )
            ),
            MeCard("N", "R", ("1", "2"), ("e@x.se",), "U", "A", "O", "2000-01-02", "K"),
        ),
        (pb.Content(geo=pb.GeoPayload(latitude=1.5, longitude=-2.5)), Geo(1.5, -2.5, None)),
        (pb.Content(geo=pb.GeoPayload(latitude=0, longitude=0, altitude=0)), Geo(0.0, 0.0, 0.0)),
        (
            pb.Content(
                epc=pb.EpcPayload(
                    name="N",
                    iban="I",
                    bic="B",
                    amount="1.5",
                    purpose="P",
                    reference="R",
                    text="T",
                    information="F",
                )
            ),
            Epc("N", "I", "B", "1.5", "P", "R", "T", "F"),
        ),
        (pb.Content(swish=pb.SwishPayload(payee="1", amount="2", message="m")), Swish("1", "2", "m", SwishEditable())),
        (
            pb.Content(swish=pb.SwishPayload(payee="1", editable=pb.SwishPayload.Editable(payee=True, message=True))),
            Swish("1", editable=SwishEditable(payee=True, amount=False, message=True)),
        ),
        (
            pb.Content(bitcoin=pb.BitcoinPayload(address="A", amount="1", label="L", message="M")),
            Bitcoin("A", "1", "L", "M"),
        ),
        (pb.Content(whatsapp=pb.WhatsAppPayload(number="1", message="m")), WhatsApp("1", "m")),
    ],
)
def test_payload_from_proto(content: pb.Content, expected: Payload) -> None:
    assert payload_from_proto(content) == expected


def test_event_from_proto_has_aware_utc_times() -> None:
    start = datetime(2026, 5, 1, 10, 0, 30, tzinfo=UTC)
    content = pb.Content(
        event=pb.EventPayload(
            summary="S",
            start=stamp(start),
            end=stamp(start + timedelta(hours=2)),
            location="L",
            description="D",
            all_day=True,
            time_zone="Europe/Stockholm",
        )
    )
    event = payload_from_proto(content)
    assert event == Event("S", start, start + timedelta(hours=2), "L", "D", True, "Europe/Stockholm")
    assert isinstance(event, Event)
    assert event.start.tzinfo is UTC
    open_ended = payload_from_proto(pb.Content(event=pb.EventPayload(summary="S", start=stamp(start))))
    assert open_ended == Event("S", start)


def test_empty_content_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        payload_from_proto(pb.Content())
    assert [v.field for v in caught.value.violations] == ["content"]


def test_unknown_enum_value_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        payload_from_proto(pb.Content(wifi=pb.WifiPayload(ssid="s", security=99)))  # type: ignore[arg-type]
    assert [v.field for v in caught.value.violations] == ["content.wifi.security"]


def test_translated_proto_encodes() -> None:
    content = pb.Content(
        wifi=pb.WifiPayload(ssid="Guest;Net", password="welcome!", security=pb.WifiPayload.SECURITY_UNSPECIFIED)
    )
    assert encode(payload_from_proto(content)) == "WIFI:T:WPA;S:Guest\\;Net;P:welcome!;;"


@pytest.mark.parametrize(
    ("start", "time_zone", "all_day"),
    [
        ("9999-12-31T23:59:59", "", False),
        ("9999-12-31T16:00:00", "Asia/Tokyo", True),
        ("0001-01-01T00:00:00", "", False),
    ],
)
def test_events_at_the_edge_of_time_are_refused_not_crashed(start: str, time_zone: str, all_day: bool) -> None:
    moment = datetime.fromisoformat(start).replace(tzinfo=UTC)
    with pytest.raises(InvalidArgument) as caught:
        encode(
            Event(
                summary="x", start=moment, end=None, location="", description="", all_day=all_day, time_zone=time_zone
            )
        )
    assert caught.value.reason == "EVENT_OUT_OF_RANGE"
