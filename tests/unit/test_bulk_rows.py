"""Bulk rows: CSV and JSON tables read, mapped to content and checked with the rules of single creation."""

from __future__ import annotations

import codecs
import pickle
import sys
import unicodedata
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from qrmesh.qr.domain import batch_files, bulk_rows
from qrmesh.qr.domain.bulk_rows import BulkInputError, RowIssue, parse_csv, parse_rows
from qrmesh.qr.v1 import batch_pb2, design_pb2, qr_code_pb2, stored_qr_code_pb2

Spec = batch_pb2.BatchSpec
PHONE = qr_code_pb2.VCardPayload.Phone

VCARD_MAPPING = {
    "First name": "vcard.first_name",
    "Last name": "last_name",
    "Email": "vcard.emails",
    "Mobile": "vcard.phones[0].number",
    "Phone type": "vcard.phones[0].type",
}


def vcard_spec(**mapping: str) -> batch_pb2.BatchSpec:
    return Spec(payload_kind=Spec.VCARD, mapping=mapping or VCARD_MAPPING)


def url_spec(column: str = "url", **kwargs: Any) -> batch_pb2.BatchSpec:
    return Spec(payload_kind=Spec.URL, mapping={column: "url.url"}, **kwargs)


def issues(parsed: bulk_rows.ParsedBatch) -> list[tuple[int, str, str, str]]:
    return [(e.row, e.column, e.field, e.code) for e in parsed.errors]


# ---------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("encode", "encoding"),
    [
        (lambda text: text.encode("utf-8"), "utf-8"),
        (lambda text: codecs.BOM_UTF8 + text.encode("utf-8"), "utf-8-sig"),
        (lambda text: text.encode("utf-16"), "utf-16"),  # with its BOM, in the machine's byte order
        (lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "utf-16"),
        (lambda text: text.encode("cp1252"), "cp1252"),
        (lambda text: text.encode("latin-1"), "cp1252"),
    ],
)
def test_encodings_are_recognized(encode: Callable[[str], bytes], encoding: str) -> None:
    text = "First name;Last name\r\nZoë;Ångström\r\nFrançois;Müller-Lüdenscheidt\r\n"
    table = parse_csv(encode(text))
    assert table.encoding == encoding
    assert table.columns == ("First name", "Last name")
    assert table.rows == [("Zoë", "Ångström"), ("François", "Müller-Lüdenscheidt")]


def test_windows_1252_punctuation_and_euro() -> None:
    note = "\u201cMen\u00fc\u201d \u2013 5 \u20ac"  # typographic quotes, an en dash, the euro sign
    table = parse_csv(f"name,note\nCafé,{note}\n".encode("cp1252"))
    assert table.rows == [("Café", note)]


def test_cyrillic_single_byte_is_not_taken_for_western() -> None:
    text = "имя,город\nИван Петров,Москва\nОльга Смирнова,Санкт-Петербург\n"  # noqa: RUF001 - Cyrillic on purpose
    table = parse_csv(text.encode("cp1251"))
    assert table.rows[0] == ("Иван Петров", "Москва")


def test_a_bom_that_lies_is_a_table_error() -> None:
    with pytest.raises(BulkInputError) as caught:
        parse_csv(codecs.BOM_UTF8 + b"a,b\n\xff\xfe,x\n")
    assert caught.value.reason == "UNKNOWN_ENCODING"
    assert caught.value.field == "source"


# ---------------------------------------------------------------------------- delimiters and quotes


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiters_are_sniffed(delimiter: str) -> None:
    rows = [["name", "url", "note"], ["A", "https://example.com/a?x=1,2", "one"], ["B", "https://example.com/b", "two"]]
    text = "\n".join(delimiter.join(f'"{c}"' if "," in c and delimiter == "," else c for c in r) for r in rows)
    table = parse_csv(text.encode())
    assert table.delimiter == delimiter
    assert table.rows == [tuple(r) for r in rows[1:]]


def test_a_single_column_file_needs_no_delimiter() -> None:
    table = parse_csv(b"url\nhttps://example.com/a\nhttps://example.com/b\n")
    assert table.columns == ("url",)
    assert [r[0] for r in table.rows] == ["https://example.com/a", "https://example.com/b"]


def test_quoted_delimiters_quotes_and_newlines() -> None:
    data = b'name,note\r\n"Doe, Jane","She said ""hi""\r\nand left"\r\n\r\n"x",y\r\n'
    table = parse_csv(data)
    assert table.rows == [("Doe, Jane", 'She said "hi"\r\nand left'), ("x", "y")]
    assert table.numbers == [1, 2]


def test_blank_lines_are_skipped_and_not_counted() -> None:
    table = parse_csv(b"\n\nurl\n\nhttps://example.com/1\n ,\n\nhttps://example.com/2\n")
    assert table.numbers == [1, 2]
    assert table.total_rows == 2


def test_explicit_delimiter_wins() -> None:
    assert parse_csv(b"a;b\n1;2\n", delimiter=",").columns == ("a;b",)


# ---------------------------------------------------------------------------- headers and shape


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "MISSING_HEADER"),
        (b"\n \n", "MISSING_HEADER"),
        (b"name,Name\nx,y\n", "DUPLICATE_COLUMN"),
        (b"name,,url\nx,y,z\n", "MISSING_COLUMN_NAME"),
        (b"a,b\n\x00\x01,x\n", "NOT_CSV"),
    ],
)
def test_table_errors(data: bytes, reason: str) -> None:
    with pytest.raises(BulkInputError) as caught:
        parse_csv(data)
    assert caught.value.reason == reason
    assert caught.value.message


def test_trailing_empty_header_cells_are_ignored() -> None:
    table = parse_csv(b"name,url,,\nA,https://example.com,,\n")
    assert table.columns == ("name", "url")
    assert table.rows == [("A", "https://example.com")]


def test_limits() -> None:
    with pytest.raises(BulkInputError) as caught:
        parse_csv(b"url\n1\n2\n3\n", max_rows=2)
    assert caught.value.reason == "TOO_MANY_ROWS"
    with pytest.raises(BulkInputError) as caught:
        parse_csv(b"url\n" + b"x" * 100, max_file_bytes=50)
    assert caught.value.reason == "FILE_TOO_LARGE"
    table = parse_csv(b"name,url\nok,x\n" + b"long," + b"y" * 30 + b"\n", max_cell_chars=20)
    assert table.issues == [RowIssue(2, "url", "", "the value has 30 characters; at most 20 fit", "CELL_TOO_LONG")]


def test_rows_of_the_wrong_length_are_row_issues() -> None:
    table = parse_csv(b"a,b,c\n1,2,3\n1,2\n1,2,3,4\n1,2,3,,\n")
    assert [(i.row, i.column, i.code) for i in table.issues] == [(2, "", "TOO_FEW_CELLS"), (3, "", "TOO_MANY_CELLS")]
    assert table.numbers == [1, 4]
    assert table.total_rows == 4


# ---------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    ("mapping", "reason"),
    [
        ({"Nope": "vcard.first_name"}, "UNKNOWN_COLUMN"),
        ({"First name": "vcard.nickname"}, "UNKNOWN_FIELD"),
        ({"First name": "vcard.phones"}, "UNKNOWN_FIELD"),  # a message: name one of its fields
        ({"First name": "vcard"}, "UNKNOWN_FIELD"),
        ({"First name": "vcard.first_name.x"}, "UNKNOWN_FIELD"),
        ({"First name": "vcard.first_name[0]"}, "UNKNOWN_FIELD"),
        ({"First name": "url.url"}, "MIXED_KINDS"),
        ({"First name": "vcard.first_name", "Last name": "first_name"}, "DUPLICATE_FIELD"),
    ],
)
def test_mapping_errors_are_request_errors(mapping: dict[str, str], reason: str) -> None:
    with pytest.raises(BulkInputError) as caught:
        parse_rows(b"First name,Last name\nA,B\n", vcard_spec(**mapping))
    assert caught.value.reason == reason
    assert caught.value.field == "batch.spec.mapping"
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own object, as a worker process sends it
    assert (copy.message, copy.reason, copy.field) == (caught.value.message, reason, "batch.spec.mapping")
    error = caught.value.invalid_argument()
    assert error.reason == reason
    assert error.violations[0].field == "batch.spec.mapping"


def test_mapping_accepts_json_names_any_case_and_content_prefix() -> None:
    spec = vcard_spec(**{"first NAME": "content.vcard.firstName", "last name": "lastName"})
    parsed = parse_rows(b"First name,Last name\nAda,Lovelace\n", spec)
    assert parsed.valid[0].content.vcard.first_name == "Ada"
    assert parsed.valid[0].content.vcard.last_name == "Lovelace"


def test_constants_fill_fields_for_every_row() -> None:
    spec = Spec(
        payload_kind=Spec.WIFI, mapping={"ssid": "ssid", "password": "password"}, constants={"wifi.security": "wpa"}
    )
    parsed = parse_rows(b"ssid,password\nCafe,correct horse\n", spec)
    assert parsed.valid[0].content.wifi.security == qr_code_pb2.WifiPayload.WPA
    with pytest.raises(BulkInputError) as caught:
        parse_rows(b"ssid\nx\n", Spec(payload_kind=Spec.WIFI, mapping={"ssid": "ssid"}, constants={"security": "x"}))
    assert (caught.value.reason, caught.value.field) == ("INVALID_CHOICE", "batch.spec.constants")


# ---------------------------------------------------------------------------- payload kinds


def test_constants_inside_list_items_only_join_items_the_cells_made() -> None:
    spec = vcard_spec(**{"First name": "first_name", "Mobile": "vcard.phones[0].number", "Kind": "phones[0].type"})
    spec.constants["vcard.phones[0].type"] = "cell"
    parsed = parse_rows(b"First name,Mobile,Kind\nAda,+46 70 123 45 67,\nBob,,\nEve,+46 70 765 43 21,work\n", spec)
    assert parsed.errors == []
    phones = [list(v.content.vcard.phones) for v in parsed.valid]
    assert phones == [
        [PHONE(number="+46 70 123 45 67", type=PHONE.CELL)],
        [],  # no number: no phone, not a phone with only a type
        [PHONE(number="+46 70 765 43 21", type=PHONE.WORK)],  # the cell wins over the constant
    ]


def test_vcard_rows_with_broken_rows_named_by_row_and_column() -> None:
    data = (
        "First name,Last name,Email,Mobile,Phone type\n"
        "Zoë,Ångström,zoe@example.com,+46 70 123 45 67,cell\n"
        ",,,,\n"  # blank: skipped, not counted
        ",,nobody@example.com,,\n"
        'Ada,"Lovelace, Countess",ada@example.com,12,work\n'
        "Bob,Builder,bob@example.com,+44 20 7946 0958,pager\n"
        "Eve," + "x" * 101 + ",,,\n"
    ).encode()
    parsed = parse_rows(data, vcard_spec())
    assert parsed.total_rows == 5
    assert [v.row for v in parsed.valid] == [1]
    card = parsed.valid[0].content.vcard
    assert (card.first_name, card.last_name, list(card.emails)) == ("Zoë", "Ångström", ["zoe@example.com"])
    assert card.phones[0].number == "+46 70 123 45 67"
    assert card.phones[0].type == qr_code_pb2.VCardPayload.Phone.CELL
    assert parsed.valid[0].values["Last name"] == "Ångström"
    assert issues(parsed) == [
        (2, "First name", "vcard.first_name", "NAME_REQUIRED"),
        (3, "Mobile", "vcard.phones[0].number", "INVALID_PHONE_NUMBER"),
        (4, "Phone type", "vcard.phones[0].type", "INVALID_CHOICE"),
        (5, "Last name", "vcard.last_name", "INVALID_VALUE"),
    ]
    by_row = {e.row: e.reason for e in parsed.errors}
    assert by_row[4] == '"pager" is not one of CELL, WORK, HOME, FAX'
    assert by_row[5] == "Last name must be at most 100 characters long (got 101)"


def test_several_columns_append_to_a_repeated_field() -> None:
    spec = vcard_spec(**{"First name": "first_name", "Work": "vcard.emails", "Home": "vcard.emails"})
    parsed = parse_rows(b"First name,Work,Home\nAda,ada@work.example,\nBob,bob@work.example,bob@home.example\n", spec)
    assert [list(v.content.vcard.emails) for v in parsed.valid] == [
        ["ada@work.example"],
        ["bob@work.example", "bob@home.example"],
    ]


def test_wifi_rows() -> None:
    spec = Spec(
        payload_kind=Spec.WIFI,
        mapping={"Network": "wifi.ssid", "Password": "wifi.password", "Security": "wifi.security", "Hidden": "hidden"},
    )
    data = (
        b"Network;Password;Security;Hidden\n"
        b"Cafe Guest;correct horse;WPA;yes\n"
        b"Open;;nopass;0\n"
        b"Bad;secret;wpa3;no\n"
        b"Hidden;secret;WPA;perhaps\n"
        b"Corp;secret;wpa2-eap;\n"
        b";secret;wpa;\n"
    )
    parsed = parse_rows(data, spec)
    assert [v.row for v in parsed.valid] == [1, 2]
    assert parsed.valid[0].content.wifi.hidden is True
    assert parsed.valid[1].content.wifi.security == qr_code_pb2.WifiPayload.NOPASS
    assert issues(parsed) == [
        (3, "Security", "wifi.security", "INVALID_CHOICE"),
        (4, "Hidden", "wifi.hidden", "INVALID_BOOLEAN"),
        (5, "", "wifi.eap_method", "EAP_METHOD_REQUIRED"),
        (6, "Network", "wifi.ssid", "REQUIRED"),
    ]
    assert parsed.errors[-1].reason == "Ssid is required"


def test_url_rows_and_the_same_refusals_as_single_creation() -> None:
    data = b"Link\nhttps://example.com/a\njavascript:alert(1)\nftp://example.com\nhttps://example.com/" + b"a" * 3000
    parsed = parse_rows(data, url_spec("Link"), max_cell_chars=5000)
    assert [v.row for v in parsed.valid] == [1]
    assert [(e.row, e.column, e.field, e.code) for e in parsed.errors] == [
        (2, "Link", "url.url", "INVALID_VALUE"),
        (3, "Link", "url.url", "INVALID_VALUE"),
        (4, "Link", "url.url", "INVALID_VALUE"),
    ]
    assert "http:// or https://" in parsed.errors[0].reason


def test_capacity_depends_on_the_designs_error_correction() -> None:
    text = "x" * 2000  # fits a version-40 symbol at M, the default (2331 bytes), not at H (1273)
    data = f"Text\n{text}\n".encode()
    spec = Spec(payload_kind=Spec.TEXT, mapping={"Text": "text.text"})
    assert len(parse_rows(data, spec).valid) == 1
    spec.design.CopyFrom(design_pb2.Design(error_correction=design_pb2.Design.H))
    parsed = parse_rows(data, spec)
    assert issues(parsed) == [(1, "", "", "CONTENT_TOO_LONG")]
    assert parsed.errors[0].reason.startswith("Content is too long")


def test_dynamic_rows_check_the_destination_only() -> None:
    spec = url_spec(mode=stored_qr_code_pb2.QrCode.DYNAMIC)
    parsed = parse_rows(b"url\nhttps://example.com/" + b"a" * 2000 + b"\nmailto:x@example.com\n", spec)
    assert [v.row for v in parsed.valid] == [1]  # the image encodes a short URL, so length is no problem
    assert issues(parsed) == [(2, "url", "url.url", "INVALID_VALUE")]


def test_numbers_and_times() -> None:
    spec = Spec(payload_kind=Spec.GEO, mapping={"lat": "latitude", "lon": "geo.longitude"})
    parsed = parse_rows(b"lat;lon\n59,3293;18.0686\nnorth;18\n91;0\n;10\n", spec)
    assert parsed.valid[0].content.geo.latitude == pytest.approx(59.3293)
    assert issues(parsed) == [
        (2, "lat", "geo.latitude", "INVALID_NUMBER"),
        (3, "lat", "geo.latitude", "INVALID_VALUE"),
        (4, "lat", "geo.latitude", "REQUIRED"),
    ]
    event = Spec(payload_kind=Spec.EVENT, mapping={"title": "summary", "start": "event.start", "end": "event.end"})
    parsed = parse_rows(
        b"title,start,end\nLaunch,2026-05-01T18:00:00+02:00,2026-05-01T20:00:00+02:00\nX,tomorrow,\n"
        b"Y,2026-05-01T18:00:00Z,2026-05-01T17:00:00Z\n",
        event,
    )
    assert parsed.valid[0].content.event.start.ToJsonString() == "2026-05-01T16:00:00Z"
    assert issues(parsed) == [(2, "start", "event.start", "INVALID_TIME"), (3, "end", "event.end", "END_BEFORE_START")]


def test_json_rows() -> None:
    rows: list[dict[str, Any]] = [
        {"Network": "Cafe", "Password": "correct horse", "Hidden": True},
        {"Network": "Open"},
        {"Network": "x" * 40},
    ]
    spec = Spec(payload_kind=Spec.WIFI, mapping={"Network": "ssid", "Password": "password", "Hidden": "hidden"})
    parsed = parse_rows(rows, spec)
    assert parsed.columns == ["Network", "Password", "Hidden"]
    assert parsed.total_rows == 3
    assert [v.row for v in parsed.valid] == [1, 2]
    assert parsed.valid[0].content.wifi.hidden is True
    assert parsed.valid[1].values == {"Network": "Open", "Password": "", "Hidden": ""}
    assert issues(parsed) == [(3, "Network", "wifi.ssid", "INVALID_VALUE")]
    table = bulk_rows.parse_json_rows(b'[{"a": "1"}, ["no"], {"a": {"nested": 1}}]')
    assert [(i.row, i.column, i.code) for i in table.issues] == [(2, "", "BAD_ROW"), (3, "a", "BAD_ROW")]
    with pytest.raises(BulkInputError):
        bulk_rows.parse_json_rows(b'{"a": 1}')


def test_unreadable_rows_keep_their_place_in_row_order() -> None:
    parsed = parse_rows(b"url,x\nhttps://example.com/1,\nhttps://example.com/2\nnot a url,\n", url_spec())
    assert [(e.row, e.code) for e in parsed.errors] == [(2, "TOO_FEW_CELLS"), (3, "INVALID_VALUE")]
    assert parsed.total_rows == 3


def test_parts_of_a_table_checked_apart_add_up_to_the_whole() -> None:
    data = b"url,x\n" + b"".join(
        b"not a url,\n" if i % 7 == 0 else (b"short\n" if i % 11 == 0 else b"https://example.com/%d,\n" % i)
        for i in range(1, 101)
    )
    whole = parse_rows(data, url_spec())
    table = bulk_rows.read_table(data)
    parts = [bulk_rows.check_table(table.part(first, first + 30), url_spec()) for first in range(1, 101, 30)]
    assert sum(part.total_rows for part in parts) == whole.total_rows == 100
    assert [v.row for part in parts for v in part.valid] == [v.row for v in whole.valid]
    assert [e for part in parts for e in part.errors] == whole.errors
    assert len(whole.errors) == 14 + 9 - 1  # multiples of 7 and of 11 (77 is both)
    restored = pickle.loads(pickle.dumps(table.part(1, 50)))  # noqa: S301 - our own object, as a process pool sends it
    assert restored == table.part(1, 50)


def test_a_large_table_costs_work_in_proportion_to_its_rows() -> None:
    """Linear: twice the rows take about twice the function calls (counted, not timed)."""

    def calls(rows: int) -> int:
        data = ("name,url\n" + "".join(f"n{i},https://example.com/{i}\n" for i in range(rows))).encode()
        count = 0

        def profile(frame: FrameType, event: str, arg: object) -> None:
            nonlocal count
            count += event in ("call", "c_call")

        sys.setprofile(profile)
        try:
            parsed = parse_rows(data, url_spec())
        finally:
            sys.setprofile(None)
        assert len(parsed.valid) == rows
        return count

    calls(50)  # one-time work first: imports, compiled validation plans
    small, large = calls(400), calls(1600)
    assert 2 * small < large <= 4.4 * small  # about 3.9 here; quadratic work would be 16


# ---------------------------------------------------------------------------- file names (the archive's, batch_files)

HOSTILE = [
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "/absolute/path",
    "C:\\Users\\x",
    "CON",
    "a\x00b\nc\u202ed\x7f",
    'what?<>:"|*',
    "...",
    ". .",
    "",
    "ä" * 500,
    "x" * 99 + "..",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_file_names_from_hostile_cells_are_safe(value: str) -> None:
    [name] = batch_files.file_names("{name}", [(7, {"name": value})])
    assert name
    assert len(name) <= batch_files.MAX_NAME
    assert "/" not in name
    assert "\\" not in name
    assert ".." not in name
    assert not any(unicodedata.category(ch)[0] == "C" for ch in name)
    assert not name.startswith((".", " "))
    assert not name.endswith((".", " "))
    assert name.upper() not in {"CON", "PRN", "AUX", "NUL"}


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("{Last name}-{row}", {"Last name": "Ångström"}, "Ångström-7"),
        ("{name}", {"name": ""}, "7"),
        ("{missing}", {}, "7"),
        ("", {}, "7"),
        ("report v1.2 {row}", {}, "report v1.2 7"),
    ],
)
def test_file_name_templates(template: str, values: dict[str, str], expected: str) -> None:
    assert batch_files.file_names(template, [(7, values)]) == [expected]


def test_file_names_are_unique_regardless_of_case() -> None:
    names = batch_files.file_names("{n}", [(1, {"n": "Same"}), (2, {"n": "same"}), (3, {"n": "Same"})])
    assert len({name.casefold() for name in names}) == 3
    assert names[0] == "Same"
