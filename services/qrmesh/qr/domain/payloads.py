"""Payload kinds and how each is encoded into the text a QR symbol carries.

Every kind is a frozen dataclass; `encode` turns one into the exact text its
standard prescribes and raises `InvalidArgument` (naming the REST JSON path of
the field at fault, e.g. `content.epc.iban`) for what the standard forbids.
The proto's own rules (required fields, lengths, patterns, ranges) have been
checked before this code runs; the checks here are the ones a proto cannot say.

Choices worth knowing:

- vCard and iCalendar lines end in CRLF and are not folded. Folding at 75
  octets is a SHOULD in RFC 2426, RFC 6350 and RFC 5545; every reader unfolds,
  but not folding keeps the symbol smaller and also suits the naive readers in
  some scanner apps that look for a property at the start of a line.
- iCalendar UID and DTSTAMP are derived from the event itself (UID from a hash
  of its fields, DTSTAMP from its start in UTC), so the same input always
  renders the same bytes and the same QR code.
- Timed events are written in UTC (`...Z`), which needs no VTIMEZONE; the time
  zone decides only the dates of all-day events.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import Enum
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qrmesh.platform.errors import InvalidArgument

# ---------------------------------------------------------------------------
# Payload kinds
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Url:
    """A web address; the URL itself is the payload."""

    url: str


@dataclass(frozen=True, slots=True)
class Text:
    """Free text, encoded as is."""

    text: str


@dataclass(frozen=True, slots=True)
class Email:
    """An email to write: a `mailto:` URI (RFC 6068)."""

    to: str
    subject: str = ""
    body: str = ""


@dataclass(frozen=True, slots=True)
class Phone:
    """A phone number to call: a `tel:` URI."""

    number: str


@dataclass(frozen=True, slots=True)
class Sms:
    """A text message to send: `SMSTO:number:message`."""

    number: str
    message: str = ""


class WifiSecurity(Enum):
    """How a Wi-Fi network authenticates."""

    UNSPECIFIED = "UNSPECIFIED"
    WPA = "WPA"
    WEP = "WEP"
    NOPASS = "NOPASS"
    WPA2_EAP = "WPA2_EAP"


@dataclass(frozen=True, slots=True)
class Wifi:
    """A Wi-Fi network to join (ZXing's `WIFI:` format)."""

    ssid: str
    password: str = ""
    security: WifiSecurity = WifiSecurity.UNSPECIFIED
    hidden: bool = False
    eap_method: str = ""
    identity: str = ""
    anonymous_identity: str = ""
    phase2_method: str = ""


class VCardPhoneType(Enum):
    """What kind of phone a vCard number belongs to."""

    UNSPECIFIED = "UNSPECIFIED"
    CELL = "CELL"
    WORK = "WORK"
    HOME = "HOME"
    FAX = "FAX"


@dataclass(frozen=True, slots=True)
class VCardPhone:
    """One phone number of a vCard contact."""

    number: str
    type: VCardPhoneType = VCardPhoneType.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class VCardAddress:
    """A postal address of a vCard contact."""

    street: str = ""
    city: str = ""
    region: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass(frozen=True, slots=True)
class VCard:
    """A contact card: vCard 3.0 (RFC 2426) or 4.0 (RFC 6350); version 0 means 3."""

    version: int = 3
    first_name: str = ""
    last_name: str = ""
    organization: str = ""
    title: str = ""
    phones: tuple[VCardPhone, ...] = ()
    emails: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    address: VCardAddress | None = None
    note: str = ""
    birthday: str = ""


@dataclass(frozen=True, slots=True)
class MeCard:
    """A compact contact card (NTT DoCoMo's `MECARD:`)."""

    name: str
    reading: str = ""
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    url: str = ""
    address: str = ""
    note: str = ""
    birthday: str = ""
    nickname: str = ""


@dataclass(frozen=True, slots=True)
class Geo:
    """A place on Earth: a `geo:` URI (RFC 5870, WGS-84)."""

    latitude: float
    longitude: float
    altitude: float | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A calendar event: an iCalendar VEVENT (RFC 5545); `start` and `end` are aware datetimes."""

    summary: str
    start: datetime
    end: datetime | None = None
    location: str = ""
    description: str = ""
    all_day: bool = False
    time_zone: str = ""


@dataclass(frozen=True, slots=True)
class Epc:
    """A SEPA credit transfer (EPC069-12 version 002, "GiroCode"); `amount` is a decimal string in euros."""

    name: str
    iban: str
    bic: str = ""
    amount: str = ""
    purpose: str = ""
    reference: str = ""
    text: str = ""
    information: str = ""


@dataclass(frozen=True, slots=True)
class SwishEditable:
    """Which prefilled Swish fields the payer may change."""

    payee: bool = False
    amount: bool = False
    message: bool = False


@dataclass(frozen=True, slots=True)
class Swish:
    """A prefilled Swish payment (the `C` format); `amount` is a decimal string in kronor."""

    payee: str
    amount: str = ""
    message: str = ""
    editable: SwishEditable = field(default_factory=SwishEditable)


@dataclass(frozen=True, slots=True)
class Bitcoin:
    """A Bitcoin payment request: a BIP21 `bitcoin:` URI; `amount` is a decimal string in BTC."""

    address: str
    amount: str = ""
    label: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class WhatsApp:
    """A WhatsApp chat: `https://wa.me/<digits>`, with a prefilled message when given."""

    number: str
    message: str = ""


Payload = Url | Text | Email | Phone | Sms | Wifi | VCard | MeCard | Geo | Event | Epc | Swish | Bitcoin | WhatsApp


def encode(payload: Payload) -> str:
    """The exact text to put in the symbol for `payload`."""
    match payload:
        case Url(url=url):
            return url
        case Text(text=text):
            return text
        case Email():
            return _email(payload)
        case Phone(number=number):
            return "tel:" + _phone_number(number, _path("phone", "number"))
        case Sms(number=number, message=message):
            return f"SMSTO:{_phone_number(number, _path('sms', 'number'))}:{message}"
        case Wifi():
            return _wifi(payload)
        case VCard():
            return _vcard(payload)
        case MeCard():
            return _mecard(payload)
        case Geo():
            return _geo(payload)
        case Event():
            return _event(payload)
        case Epc():
            return _epc(payload)
        case Swish():
            return _swish(payload)
        case Bitcoin():
            return _bitcoin(payload)
        case WhatsApp():
            return _whatsapp(payload)
    raise TypeError(f"unknown payload kind: {type(payload).__name__}")


def required_error_correction(payload: Payload) -> str | None:
    """The error correction level the payload's standard demands ("M" for EPC), or None if it leaves it free."""
    if isinstance(payload, Epc):
        return "M"
    return None


def _path(kind: str, *parts: str) -> str:
    return ".".join(("content", kind, *parts))


def _invalid(path: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument.field(path, description, reason=reason)


def _percent(value: str) -> str:
    """Percent-encode UTF-8 per RFC 3986: everything but unreserved characters; spaces become %20."""
    return quote(value, safe="")


def _query(params: list[tuple[str, str]]) -> str:
    present = [f"{name}={_percent(value)}" for name, value in params if value]
    return "?" + "&".join(present) if present else ""


def _one_line(value: str, path: str) -> None:
    if "\n" in value or "\r" in value:
        raise _invalid(path, "must be a single line", "LINE_BREAK_NOT_ALLOWED")


def _normalize_newlines(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------
# Phone numbers
# ---------------------------------------------------------------------------

_PHONE_SEPARATORS = re.compile(r"[\s.()\-]")
_ASCII_DIGITS = re.compile(r"[0-9]+")
_E164_MAX_DIGITS = 15
_INTERNATIONAL_MIN_DIGITS = 7
_LOCAL_MIN_DIGITS = 3


@dataclass(frozen=True, slots=True)
class _ParsedPhone:
    digits: str
    international: bool

    def text(self) -> str:
        return "+" + self.digits if self.international else self.digits


def _parse_phone(number: str, path: str) -> _ParsedPhone:
    value = number.strip()
    international = value.startswith(("+", "00"))
    if international:
        # "+46 (0)70 ..." is a common way to show the trunk prefix a caller from abroad leaves out.
        value = value.replace("(0)", "", 1)
    value = _PHONE_SEPARATORS.sub("", value)
    if value.startswith("+"):
        value = value[1:]
    elif value.startswith("00"):
        value = value[2:]
    if not _ASCII_DIGITS.fullmatch(value):
        raise _invalid(
            path,
            f"must be a phone number of digits, optionally starting with + or 00 (got {number!r})",
            "INVALID_PHONE_NUMBER",
        )
    if international:
        if value.startswith("0"):
            raise _invalid(path, "the country code after + or 00 cannot start with 0", "INVALID_PHONE_NUMBER")
        if not _INTERNATIONAL_MIN_DIGITS <= len(value) <= _E164_MAX_DIGITS:
            raise _invalid(
                path,
                f"an international number has {_INTERNATIONAL_MIN_DIGITS} to {_E164_MAX_DIGITS} digits "
                f"(got {len(value)})",
                "INVALID_PHONE_NUMBER",
            )
    elif not _LOCAL_MIN_DIGITS <= len(value) <= _E164_MAX_DIGITS:
        raise _invalid(
            path,
            f"a phone number has {_LOCAL_MIN_DIGITS} to {_E164_MAX_DIGITS} digits (got {len(value)})",
            "INVALID_PHONE_NUMBER",
        )
    return _ParsedPhone(value, international)


def _phone_number(number: str, path: str) -> str:
    """E.164 (`+4670...`) when the number carries a country code, the local digits as given otherwise."""
    return _parse_phone(number, path).text()


# ---------------------------------------------------------------------------
# Email (RFC 6068)
# ---------------------------------------------------------------------------

# RFC 5322 dot-atom with the UTF-8 of RFC 6532, or a quoted string; a domain of dot-separated labels.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_LOCAL_PART = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*|\"(?:[^\"\\\r\n]|\\.)*\"")
_DOMAIN_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = re.compile(rf"{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})+")
# Characters of an addr-spec that may stay as they are in a mailto URI (RFC 6068 section 2).
_MAILTO_SAFE = "!$'*+-.^_~=&@"


def _check_email(address: str, path: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise _invalid(path, f"must be an email address like name@example.com (got {address!r})", "INVALID_EMAIL")
    return address


def _email(payload: Email) -> str:
    to = _check_email(payload.to.strip(), _path("email", "to"))
    _one_line(payload.subject, _path("email", "subject"))
    body = _normalize_newlines(payload.body).replace("\n", "\r\n")
    return "mailto:" + quote(to, safe=_MAILTO_SAFE) + _query([("subject", payload.subject), ("body", body)])


# ---------------------------------------------------------------------------
# Wi-Fi (ZXing's WIFI: format)
# ---------------------------------------------------------------------------

_HEX = re.compile(r"[0-9A-Fa-f]+")
_WIFI_TYPES = {
    WifiSecurity.WPA: "WPA",
    WifiSecurity.WEP: "WEP",
    WifiSecurity.NOPASS: "nopass",
    WifiSecurity.WPA2_EAP: "WPA2-EAP",
}
_SSID_MAX_BYTES = 32
_WEP_ASCII_LENGTHS = (5, 13, 16)
_WEP_HEX_LENGTHS = (10, 26, 32)
_WPA_PSK_HEX_LENGTH = 64
_WPA_PASSPHRASE = re.compile(r"[\x20-\x7e]{8,63}")


def _zxing_escape(value: str) -> str:
    """Backslash-escape the characters ZXing's WIFI: and MECARD: parsers treat as syntax."""
    return re.sub(r'([\\;,:"])', r"\\\1", value)


def _looks_hex(value: str) -> bool:
    return len(value) % 2 == 0 and _HEX.fullmatch(value) is not None


def _wifi_literal(value: str) -> str:
    """A value meant literally: escaped, or quoted when it is all hex digits, which readers would decode as hex."""
    return f'"{value}"' if _looks_hex(value) else _zxing_escape(value)


def _wifi(payload: Wifi) -> str:
    ssid, password = payload.ssid, payload.password
    security = payload.security
    if security is WifiSecurity.UNSPECIFIED:
        security = WifiSecurity.WPA if password else WifiSecurity.NOPASS
    if not ssid:
        raise _invalid(_path("wifi", "ssid"), "is required", "SSID_REQUIRED")
    if len(ssid.encode()) > _SSID_MAX_BYTES:
        raise _invalid(
            _path("wifi", "ssid"),
            f"must be at most {_SSID_MAX_BYTES} bytes in UTF-8 (got {len(ssid.encode())})",
            "SSID_TOO_LONG",
        )
    password_path = _path("wifi", "password")
    if security is WifiSecurity.NOPASS and password:
        raise _invalid(password_path, "an open network (NOPASS) has no password", "PASSWORD_NOT_ALLOWED")
    if security is not WifiSecurity.NOPASS and not password:
        raise _invalid(password_path, f"is required for {security.name} networks", "PASSWORD_REQUIRED")
    eap_fields = {
        "eapMethod": payload.eap_method,
        "identity": payload.identity,
        "anonymousIdentity": payload.anonymous_identity,
        "phase2Method": payload.phase2_method,
    }
    if security is not WifiSecurity.WPA2_EAP:
        for json_name, value in eap_fields.items():
            if value:
                raise _invalid(_path("wifi", json_name), "is only allowed when security is WPA2_EAP", "EAP_ONLY")

    if security is WifiSecurity.WEP:
        password_text = _wep_key(password, password_path)
    elif security is WifiSecurity.WPA:
        password_text = _wpa_key(password, password_path)
    else:
        # An EAP password goes to the authenticator as it is: quotes would become part of it.
        password_text = _zxing_escape(password)

    parts = [f"T:{_WIFI_TYPES[security]}", f"S:{_wifi_literal(ssid)}"]
    if password_text:
        parts.append(f"P:{password_text}")
    if security is WifiSecurity.WPA2_EAP:
        if not payload.eap_method:
            raise _invalid(_path("wifi", "eapMethod"), "is required for WPA2_EAP networks", "EAP_METHOD_REQUIRED")
        parts.append(f"E:{payload.eap_method.upper()}")
        if payload.anonymous_identity:
            parts.append(f"A:{_zxing_escape(payload.anonymous_identity)}")
        if payload.identity:
            parts.append(f"I:{_zxing_escape(payload.identity)}")
        if payload.phase2_method:
            parts.append(f"PH2:{payload.phase2_method.upper()}")
    if payload.hidden:
        parts.append("H:true")
    return "WIFI:" + "".join(part + ";" for part in parts) + ";"


def _wep_key(password: str, path: str) -> str:
    if len(password) in _WEP_HEX_LENGTHS and _HEX.fullmatch(password):
        return password  # a raw hex key: readers must decode it as hex
    if len(password) in _WEP_ASCII_LENGTHS and password.isascii():
        return _wifi_literal(password)
    raise _invalid(
        path,
        "a WEP key is 5, 13 or 16 ASCII characters or 10, 26 or 32 hexadecimal digits",
        "INVALID_WEP_KEY",
    )


def _wpa_key(password: str, path: str) -> str:
    if len(password) == _WPA_PSK_HEX_LENGTH and _HEX.fullmatch(password):
        return password  # a raw 256-bit pre-shared key in hex
    if _WPA_PASSPHRASE.fullmatch(password):
        return _wifi_literal(password)
    raise _invalid(
        path,
        "a WPA passphrase is 8 to 63 printable ASCII characters (or a key of 64 hexadecimal digits)",
        "INVALID_WPA_PASSPHRASE",
    )


# ---------------------------------------------------------------------------
# vCard (RFC 2426, RFC 6350)
# ---------------------------------------------------------------------------

_V3_PHONE_TYPES = {
    VCardPhoneType.CELL: "CELL",
    VCardPhoneType.WORK: "WORK",
    VCardPhoneType.HOME: "HOME",
    VCardPhoneType.FAX: "FAX",
}
_V4_PHONE_TYPES = {kind: name.lower() for kind, name in _V3_PHONE_TYPES.items()}
_CRLF = "\r\n"


def _text_escape(value: str) -> str:
    """vCard and iCalendar TEXT escaping: backslash, semicolon, comma, and line breaks as \\n."""
    value = _normalize_newlines(value)
    return value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _parse_date(value: str, path: str) -> date:
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise _invalid(path, f"must be a real date like 1990-04-25 (got {value!r})", "INVALID_DATE") from None


def _check_url(value: str, path: str) -> str:
    ok = not re.search(r"[\x00-\x20\x7f]", value)
    if ok:
        try:
            parts = urlsplit(value)
            ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
    if not ok:
        raise _invalid(
            path, f"must be an absolute URL starting with http:// or https:// (got {value!r})", "INVALID_URL"
        )
    return value


def _vcard(payload: VCard) -> str:
    version = payload.version or 3
    if version not in (3, 4):
        raise _invalid(
            _path("vcard", "version"), f"must be 3 or 4 (got {payload.version})", "UNSUPPORTED_VCARD_VERSION"
        )
    first, last, org = payload.first_name.strip(), payload.last_name.strip(), payload.organization.strip()
    full_name = " ".join(part for part in (first, last) if part) or org
    if not full_name:
        raise _invalid(
            _path("vcard", "firstName"),
            "a contact card needs a first name, a last name or an organization",
            "NAME_REQUIRED",
        )
    lines = [
        "BEGIN:VCARD",
        f"VERSION:{version}.0",
        f"N:{_text_escape(last)};{_text_escape(first)};;;",
        f"FN:{_text_escape(full_name)}",
    ]
    if org:
        lines.append(f"ORG:{_text_escape(org)}")
    if payload.title:
        lines.append(f"TITLE:{_text_escape(payload.title)}")
    for index, phone in enumerate(payload.phones):
        lines.append(_vcard_tel(version, phone, _path("vcard", f"phones[{index}]", "number")))
    for index, email in enumerate(payload.emails):
        address = _check_email(email.strip(), _path("vcard", f"emails[{index}]"))
        lines.append(f"EMAIL:{_text_escape(address)}")
    for index, url in enumerate(payload.urls):
        checked = _check_url(url.strip(), _path("vcard", f"urls[{index}]"))
        # RFC 6350 3.4: a comma is escaped in every value, URIs included; vCard 3 readers unescape it alike.
        lines.append("URL:" + checked.replace("\\", "\\\\").replace(",", "\\,"))
    if payload.address is not None:
        a = payload.address
        components = (a.street, a.city, a.region, a.postal_code, a.country)
        if any(components):
            lines.append("ADR:;;" + ";".join(_text_escape(c) for c in components))
    if payload.note:
        lines.append(f"NOTE:{_text_escape(payload.note)}")
    if payload.birthday:
        born = _parse_date(payload.birthday, _path("vcard", "birthday"))
        lines.append(f"BDAY:{born.isoformat() if version == 3 else born.strftime('%Y%m%d')}")
    lines.append("END:VCARD")
    return _CRLF.join(lines) + _CRLF


def _vcard_tel(version: int, phone: VCardPhone, path: str) -> str:
    parsed = _parse_phone(phone.number, path)
    if version == 3:
        kind = _V3_PHONE_TYPES.get(phone.type)
        return f"TEL;TYPE={kind}:{parsed.text()}" if kind else f"TEL:{parsed.text()}"
    kind = _V4_PHONE_TYPES.get(phone.type)
    type_param = f";TYPE={kind}" if kind else ""
    if parsed.international:
        # RFC 6350 prefers a tel: URI; RFC 3966 allows a tel: URI without context only for global numbers.
        return f"TEL{type_param};VALUE=uri:tel:{parsed.text()}"
    # A local number stays free text, TEL's default value type in RFC 6350.
    return f"TEL{type_param}:{parsed.text()}"


# ---------------------------------------------------------------------------
# MECARD
# ---------------------------------------------------------------------------


def _mecard(payload: MeCard) -> str:
    if not payload.name.strip():
        raise _invalid(_path("mecard", "name"), "is required", "NAME_REQUIRED")
    phones = [_phone_number(p, _path("mecard", f"phones[{i}]")) for i, p in enumerate(payload.phones)]
    emails = [_check_email(e.strip(), _path("mecard", f"emails[{i}]")) for i, e in enumerate(payload.emails)]
    birthday = ""
    if payload.birthday:
        birthday = _parse_date(payload.birthday, _path("mecard", "birthday")).strftime("%Y%m%d")
    fields = [("N", _mecard_name(payload.name)), ("SOUND", _mecard_name(payload.reading))]
    plain = [
        *(("TEL", phone) for phone in phones),
        *(("EMAIL", email) for email in emails),
        ("URL", payload.url),
        ("ADR", payload.address),
        ("NOTE", payload.note),
        ("BDAY", birthday),
        ("NICKNAME", payload.nickname),
    ]
    fields += [(key, _zxing_escape(value)) for key, value in plain]
    return "MECARD:" + "".join(f"{key}:{value};" for key, value in fields if value) + ";"


def _mecard_name(name: str) -> str:
    """N and SOUND are "Last,First": the first comma separates the parts, everything else is escaped."""
    last, comma, first = name.strip().partition(",")
    return _zxing_escape(last.strip()) + comma + _zxing_escape(first.strip())


# ---------------------------------------------------------------------------
# geo: (RFC 5870)
# ---------------------------------------------------------------------------


def _decimal_text(value: float, places: int) -> str:
    """Fixed-point text with at most `places` decimals, no exponent, no trailing zeros, no negative zero."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _geo(payload: Geo) -> str:
    checks = (
        ("latitude", payload.latitude, 90.0),
        ("longitude", payload.longitude, 180.0),
    )
    for name, value, limit in checks:
        if not math.isfinite(value) or abs(value) > limit:
            raise _invalid(_path("geo", name), f"must be between -{limit:g} and {limit:g}", "OUT_OF_RANGE")
    longitude = payload.longitude
    if abs(payload.latitude) == 90.0:
        longitude = 0.0  # RFC 5870 3.4.2: the poles are written with longitude 0
    text = f"geo:{_decimal_text(payload.latitude, 7)},{_decimal_text(longitude, 7)}"
    if payload.altitude is not None:
        if not math.isfinite(payload.altitude):
            raise _invalid(_path("geo", "altitude"), "must be a finite number", "OUT_OF_RANGE")
        text += f",{_decimal_text(payload.altitude, 2)}"
    return text


# ---------------------------------------------------------------------------
# iCalendar event (RFC 5545)
# ---------------------------------------------------------------------------

_PRODID = "-//qrmesh//QR//EN"


_EARLIEST_EVENT = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST_EVENT = datetime(9998, 12, 31, 23, 59, 59, tzinfo=UTC)


def _ical_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _event(payload: Event) -> str:
    zone_name = payload.time_zone.strip()
    zone_path = _path("event", "timeZone")
    try:
        zone = ZoneInfo(zone_name) if zone_name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise _invalid(
            zone_path,
            f"must be an IANA time zone like Europe/Stockholm (got {payload.time_zone!r})",
            "UNKNOWN_TIME_ZONE",
        ) from None
    start = payload.start
    if start.tzinfo is None or (payload.end is not None and payload.end.tzinfo is None):
        raise ValueError("event times must be timezone-aware")
    start = start.replace(microsecond=0)
    end = payload.end.replace(microsecond=0) if payload.end is not None else None
    end_path = _path("event", "end")
    # Far-off dates would overflow when a default end or a time zone is applied.
    for moment, moment_path in ((start, _path("event", "start")), (end, end_path)):
        if moment is not None and not _EARLIEST_EVENT <= moment <= _LATEST_EVENT:
            raise _invalid(moment_path, "must be between 1900-01-01 and 9998-12-31", "EVENT_OUT_OF_RANGE")

    if payload.all_day:
        first_day = start.astimezone(zone).date()
        last_day = end.astimezone(zone).date() if end is not None else first_day
        if last_day < first_day:
            raise _invalid(end_path, "the last day must not be before the first day", "END_BEFORE_START")
        # DTEND of an all-day event is exclusive: the day after the last day.
        dtstart = f"DTSTART;VALUE=DATE:{first_day.strftime('%Y%m%d')}"
        dtend = f"DTEND;VALUE=DATE:{(last_day + timedelta(days=1)).strftime('%Y%m%d')}"
        uid_times = (first_day.isoformat(), last_day.isoformat())
    else:
        if end is None:
            end = start + timedelta(hours=1)
        if end < start:
            raise _invalid(end_path, "must not be before the start", "END_BEFORE_START")
        dtstart, dtend = f"DTSTART:{_ical_utc(start)}", f"DTEND:{_ical_utc(end)}"
        uid_times = (_ical_utc(start), _ical_utc(end))

    identity = "\x1f".join(
        (payload.summary, *uid_times, payload.location, payload.description, str(payload.all_day), zone_name)
    )
    uid = hashlib.sha256(identity.encode()).hexdigest()[:32] + "@qrmesh"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:{_PRODID}",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        # Derived from the event, not the clock, so the same event always renders the same code.
        f"DTSTAMP:{_ical_utc(start)}",
        dtstart,
        dtend,
        f"SUMMARY:{_text_escape(payload.summary)}",
    ]
    if payload.location:
        lines.append(f"LOCATION:{_text_escape(payload.location)}")
    if payload.description:
        lines.append(f"DESCRIPTION:{_text_escape(payload.description)}")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return _CRLF.join(lines) + _CRLF


# ---------------------------------------------------------------------------
# EPC QR code (EPC069-12 version 002)
# ---------------------------------------------------------------------------

EPC_MAX_BYTES = 331
_EPC_MIN_AMOUNT = Decimal("0.01")
_EPC_MAX_AMOUNT = Decimal("999999999.99")

# IBAN lengths from the IBAN registry (ISO 13616): every SEPA country and many others.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")
_CREDITOR_REFERENCE = re.compile(r"RF[0-9]{2}[A-Z0-9]{1,21}")


def _mod97(text: str) -> int:
    """ISO 7064 MOD 97-10 of an alphanumeric string, letters counting as 10 to 35."""
    return int("".join(str(int(char, 36)) for char in text)) % 97


def _iban(value: str, path: str) -> str:
    iban = re.sub(r"\s", "", value).upper()
    if not _IBAN_SHAPE.fullmatch(iban):
        raise _invalid(
            path,
            "must be an IBAN: a country code, 2 check digits and up to 30 letters and digits",
            "INVALID_IBAN",
        )
    expected = _IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        raise _invalid(
            path,
            f"an IBAN from {iban[:2]} has {expected} characters (got {len(iban)})",
            "INVALID_IBAN",
        )
    if _mod97(iban[4:] + iban[:4]) != 1:
        raise _invalid(path, "the IBAN's check digits do not match (is there a typo?)", "INVALID_IBAN")
    return iban


def _creditor_reference(value: str, path: str) -> str:
    reference = re.sub(r"\s", "", value).upper()
    if not _CREDITOR_REFERENCE.fullmatch(reference) or _mod97(reference[4:] + reference[:4]) != 1:
        raise _invalid(
            path,
            "a creditor reference (ISO 11649) is RF, 2 check digits and up to 21 letters and digits "
            "whose check digits match",
            "INVALID_CREDITOR_REFERENCE",
        )
    return reference


def _amount(value: str, path: str, low: Decimal, high: Decimal, unit: str) -> Decimal:
    try:
        amount = Decimal(value.replace(",", "."))
    except InvalidOperation:
        raise _invalid(path, f"must be an amount in {unit} (got {value!r})", "INVALID_AMOUNT") from None
    if not amount.is_finite() or not low <= amount <= high:
        raise _invalid(path, f"must be between {low} and {high} {unit} (got {value})", "INVALID_AMOUNT")
    return amount


def _epc(payload: Epc) -> str:
    name = payload.name.strip()
    if not name:
        raise _invalid(_path("epc", "name"), "is required", "NAME_REQUIRED")
    iban = _iban(payload.iban, _path("epc", "iban"))
    amount = ""
    if payload.amount:
        euros = _amount(payload.amount, _path("epc", "amount"), _EPC_MIN_AMOUNT, _EPC_MAX_AMOUNT, "euros")
        amount = f"EUR{euros.quantize(Decimal('0.01'))}"
    reference, text = payload.reference.strip(), payload.text.strip()
    if reference and text:
        raise _invalid(
            _path("epc", "reference"),
            "give either a structured reference or a text, not both",
            "EPC_REFERENCE_AND_TEXT",
        )
    if reference.upper().startswith("RF"):
        reference = _creditor_reference(reference, _path("epc", "reference"))
    for json_name, value in (
        ("name", name),
        ("reference", reference),
        ("text", text),
        ("information", payload.information),
    ):
        _one_line(value, _path("epc", json_name))
    lines = [
        "BCD",
        "002",
        "1",  # character set: UTF-8
        "SCT",
        payload.bic.strip().upper(),
        name,
        iban,
        amount,
        payload.purpose.strip().upper(),
        reference,
        text,
        payload.information.strip(),
    ]
    while not lines[-1]:
        lines.pop()
    encoded = "\n".join(lines)
    size = len(encoded.encode())
    if size > EPC_MAX_BYTES:
        raise _invalid(
            _path("epc"),
            f"an EPC QR code carries at most {EPC_MAX_BYTES} bytes (this one needs {size}); shorten the texts",
            "PAYLOAD_TOO_LONG",
        )
    return encoded


# ---------------------------------------------------------------------------
# Swish
# ---------------------------------------------------------------------------

# Swish's "QR code encoding specification" (Swish QR-code API manual, section 6): the C format is
# C<payee>;<amount>;<message>;<lock mask>. The amount uses a decimal comma and the message is URL-encoded.
# The lock mask is the decimal value of a bit field, payee bit 0, amount bit 1, message bit 2, where a set
# bit makes the field editable and a clear bit fixes it (so 0 locks everything, 6 frees amount and message).
_SWISH_PAYEE = re.compile(r"123[0-9]{7}|90[0-9]{5}|07[0-9]{8}|467[0-9]{8}")
_SWISH_MIN_AMOUNT = Decimal("0.01")
_SWISH_MAX_AMOUNT = Decimal("999999999.99")


def _swish_payee(value: str, path: str) -> str:
    payee = _PHONE_SEPARATORS.sub("", value.strip())
    if payee.startswith("+"):
        payee = payee[1:]
    elif payee.startswith("00"):
        payee = payee[2:]
    if not _SWISH_PAYEE.fullmatch(payee):
        raise _invalid(
            path,
            "must be a Swish number (123 456 78 90) or a Swedish mobile number (070 123 45 67 or +46 70 123 45 67)",
            "INVALID_SWISH_PAYEE",
        )
    return payee


def _swish(payload: Swish) -> str:
    payee = _swish_payee(payload.payee, _path("swish", "payee"))
    amount = ""
    if payload.amount:
        value = _amount(payload.amount, _path("swish", "amount"), _SWISH_MIN_AMOUNT, _SWISH_MAX_AMOUNT, "kronor")
        amount = f"{value.quantize(Decimal('0.01'))}".replace(".", ",")
    editable = payload.editable
    mask = (1 if editable.payee else 0) | (2 if editable.amount else 0) | (4 if editable.message else 0)
    return f"C{payee};{amount};{_percent(payload.message)};{mask}"


# ---------------------------------------------------------------------------
# Bitcoin (BIP21)
# ---------------------------------------------------------------------------

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_VERSIONS = {0x00, 0x05, 0x6F, 0xC4}  # P2PKH and P2SH, mainnet and testnet
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_PREFIXES = ("bc", "tb")
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3
_BTC_MAX_SUPPLY = Decimal(21_000_000)


def _base58check_ok(address: str) -> bool:
    number = 0
    for char in address:
        digit = _BASE58.find(char)
        if digit < 0:
            return False
        number = number * 58 + digit
    zeros = len(address) - len(address.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    raw = b"\x00" * zeros + body
    if len(raw) != 25 or raw[0] not in _BASE58_VERSIONS:
        return False
    return hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()[:4] == raw[-4:]


def _bech32_polymod(values: list[int]) -> int:
    generators = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(generators):
            if (top >> bit) & 1:
                check ^= generator
    return check


def _segwit_ok(address: str) -> bool:
    """BIP173 (witness v0, bech32) and BIP350 (v1 and later, bech32m) address checks."""
    if address.lower() != address and address.upper() != address:
        return False
    address = address.lower()
    prefix, separator, data_part = address.rpartition("1")
    if not separator or prefix not in _BECH32_PREFIXES or len(data_part) < 7 or len(address) > 90:
        return False
    if any(char not in _BECH32 for char in data_part):
        return False
    data = [_BECH32.index(char) for char in data_part]
    expanded = [ord(c) >> 5 for c in prefix] + [0] + [ord(c) & 31 for c in prefix]
    version = data[0]
    const = _BECH32_CONST if version == 0 else _BECH32M_CONST
    if version > 16 or _bech32_polymod(expanded + data) != const:
        return False
    bits = "".join(f"{value:05b}" for value in data[1:-6])
    padding = len(bits) % 8
    if padding > 4 or "1" in bits[len(bits) - padding :]:
        return False
    program_length = len(bits) // 8
    if version == 0:
        return program_length in (20, 32)
    return 2 <= program_length <= 40


def _bitcoin(payload: Bitcoin) -> str:
    address = payload.address.strip()
    if not (_segwit_ok(address) if address.lower().startswith(_BECH32_PREFIXES) else _base58check_ok(address)):
        raise _invalid(
            _path("bitcoin", "address"),
            "is not a valid Bitcoin address (its checksum does not match)",
            "INVALID_BITCOIN_ADDRESS",
        )
    amount = ""
    if payload.amount:
        value = _amount(payload.amount, _path("bitcoin", "amount"), Decimal("0.00000001"), _BTC_MAX_SUPPLY, "BTC")
        amount = f"{value.normalize():f}"
    params = [("amount", amount), ("label", payload.label), ("message", payload.message)]
    return f"bitcoin:{address}" + _query(params)


# ---------------------------------------------------------------------------
# WhatsApp
# ---------------------------------------------------------------------------


def _whatsapp(payload: WhatsApp) -> str:
    path = _path("whatsapp", "number")
    parsed = _parse_phone(payload.number, path)
    if not parsed.international:
        if parsed.digits.startswith("0"):
            raise _invalid(
                path,
                "must be in international format with the country code, like +46 70 123 45 67",
                "INVALID_PHONE_NUMBER",
            )
        parsed = _parse_phone("+" + parsed.digits, path)
    return f"https://wa.me/{parsed.digits}" + _query([("text", payload.message)])
