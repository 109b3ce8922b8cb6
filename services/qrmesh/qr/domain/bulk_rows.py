"""Rows for bulk generation: CSV or JSON in, one `Content` per row out, every problem named by row and column.

Pure (no I/O), synchronous. `parse_rows(data, spec)` does it all: `read_table` then `check_table`, which
also takes slices of a table (`Table.part`) so big tables can be checked in several processes. The steps:

- `parse_csv(data)` / `parse_json_rows(data)` / `table_from_records(rows)`: to a `Table` (header plus rows of
  strings). CSV encoding is sniffed (a BOM for UTF-8/UTF-16/UTF-32, else strict UTF-8, else
  charset-normalizer's best guess; text that reads as Western European in Windows-1252, the usual spreadsheet
  export, is taken as such, since detectors misjudge short samples of it), the delimiter too (comma, semicolon,
  tab or pipe); quotes and quoted line breaks follow RFC 4180, blank lines are skipped and the first non-blank
  line is the header. Problems of the whole table raise `BulkInputError`; problems of one row are `RowIssue`s.
- `compile_mapping(mapping, columns, kind=...)`: column -> field path inside `qrmesh.qr.v1.Content`
  ("vcard.first_name" or "first_name" with the kind, "vcard.phones[0].number"; proto or JSON names), resolved
  against the proto descriptors once.
- `build_content(mapping, row, number)`: one row to a `Content`, reading numbers, booleans (true/false,
  yes/no, 1/0), enum values by name (any case) and timestamps (ISO 8601) from the cells.
- `check_content(content, ...)`: the rules single creation applies, through the same functions: the proto's
  rules (`qrmesh.platform.validation`, as the interceptor checks every request), then the payload's standard,
  the design and the symbol's capacity (`qrmesh.qr.rendering.check_renderable`, as `CreateQrCode` does).

File names and display names from templates are the archive's business (`domain/batch_files.py`).
"""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import charset_normalizer
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from qrmesh.platform import validation
from qrmesh.platform.errors import FieldViolation, InvalidArgument
from qrmesh.qr.v1 import batch_pb2, design_pb2, qr_code_pb2, qr_code_service_pb2, stored_qr_code_pb2

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Default largest table."""
MAX_CELL_CHARS = 4296
"""Default longest cell: the longest string any payload takes (text); a QR symbol holds less."""
MAX_ROWS = 1_000_000
"""Default most data rows; the plan's `bulk_rows` is passed by the caller."""
MAX_COLUMNS = 500
"""Most columns in a header."""
DELIMITERS = ",;\t|"
"""Delimiters the sniffer chooses from."""

_SNIFF_CHARS = 64 * 1024
_CONTENT = qr_code_pb2.Content.DESCRIPTOR
_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name
_INTEGERS = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_FLOATS = {FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT}
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([0-9]{1,2})\])?")
_MAPPING_FIELD = "batch.spec.mapping"
_CONSTANTS_FIELD = "batch.spec.constants"
_TABLE_FIELD = "source"


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowIssue:
    """One problem of one row: `row` is the 1-based data row (the header and blank lines are not counted),
    `column` the column at fault as named in the header ("" for the row as a whole), `field` the field path
    inside `Content` ("vcard.first_name"; "" when not one field's), `reason` what a person should fix and
    `code` the same for a program (UPPER_SNAKE)."""

    row: int
    column: str
    field: str
    reason: str
    code: str


@dataclass(frozen=True, slots=True)
class ValidRow:
    """A row single creation would accept: its number, its content and every cell by column name."""

    row: int
    content: qr_code_pb2.Content
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A whole table checked: its header, how many data rows it has, the valid rows and the issues, both in
    row order (a row may have several issues)."""

    columns: list[str]
    total_rows: int
    valid: list[ValidRow]
    errors: list[RowIssue]


class BulkInputError(Exception):
    """A problem of the whole table or request (not decodable, no header, an unknown column or field): `reason`
    (UPPER_SNAKE), `message` (for a person) and `field`, the request field at fault (e.g. "batch.spec.mapping")."""

    def __init__(self, message: str, *, reason: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable, so it crosses from a worker process to the server intact.
        return (_bulk_input_error, (self.message, self.reason, self.field))

    def invalid_argument(self) -> InvalidArgument:
        """The error to answer: INVALID_ARGUMENT with `reason`, naming `field`."""
        return InvalidArgument(self.message, violations=[FieldViolation(self.field, self.message)], reason=self.reason)


def _bulk_input_error(message: str, reason: str, field: str) -> BulkInputError:
    return BulkInputError(message, reason=reason, field=field)


@dataclass(frozen=True, slots=True)
class Table:
    """Rows read from a file: `rows[i]` has one cell per column (in `columns` order) and is data row
    `numbers[i]`. Rows that could not be read are not in `rows`; their issues are in `issues`."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    numbers: list[int]
    issues: list[RowIssue]
    total_rows: int
    encoding: str = "utf-8"
    delimiter: str = ","

    def part(self, first: int, stop: int) -> Table:
        """The data rows numbered `first` up to (not including) `stop`, readable or not, as a table."""
        low, high = bisect.bisect_left(self.numbers, first), bisect.bisect_left(self.numbers, stop)
        issues = [issue for issue in self.issues if first <= issue.row < stop]
        return Table(
            self.columns,
            self.rows[low:high],
            self.numbers[low:high],
            issues,
            max(0, min(stop, self.total_rows + 1) - first),
            self.encoding,
            self.delimiter,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where one column (or constant) goes: the fields from `Content` down, each with the index of a repeated
    message on the way, its JSON path (`content.vcard.firstName`) and its path for people (`vcard.first_name`)."""

    column: str
    index: int
    fields: tuple[tuple[FieldDescriptor, int | None], ...]
    json_path: str
    path: str

    @property
    def leaf(self) -> FieldDescriptor:
        """The field the cell fills."""
        return self.fields[-1][0]


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """A compiled mapping: the payload kind (`url`, `vcard`, ...), a target per mapped column, and constants
    every row gets (set first, so a non-empty cell of a mapped column wins)."""

    kind: str
    targets: tuple[Target, ...]
    constants: tuple[tuple[Target, object], ...] = ()


# ---------------------------------------------------------------------------
# The whole step
# ---------------------------------------------------------------------------


def parse_rows(
    data: bytes | Sequence[Mapping[str, str]],
    spec: batch_pb2.BatchSpec,
    *,
    max_rows: int | None = None,
    max_cell_chars: int = MAX_CELL_CHARS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ParsedBatch:
    """Read a CSV file (bytes) or JSON rows, apply `spec`'s mapping and constants, and check every row as
    `CreateQrCode` would (with `spec.design` for STATIC codes; DYNAMIC codes encode a short URL, so only the
    destination is checked per row). BulkInputError for a problem of the whole table or spec, including
    more rows than `max_rows` (TOO_MANY_ROWS)."""
    return check_table(
        read_table(data, max_rows=max_rows, max_cell_chars=max_cell_chars, max_file_bytes=max_file_bytes), spec
    )


def read_table(
    data: bytes | Sequence[Mapping[str, str]],
    *,
    max_rows: int | None = None,
    max_cell_chars: int = MAX_CELL_CHARS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Table:
    """The first half of `parse_rows`: a CSV file (bytes) or JSON rows read into a `Table`, unchecked."""
    limit = MAX_ROWS if max_rows is None else max_rows
    if isinstance(data, bytes | bytearray | memoryview):
        return parse_csv(bytes(data), max_rows=limit, max_cell_chars=max_cell_chars, max_file_bytes=max_file_bytes)
    return table_from_records(data, max_rows=limit, max_cell_chars=max_cell_chars)


def check_table(table: Table, spec: batch_pb2.BatchSpec) -> ParsedBatch:
    """The second half of `parse_rows`: every row of `table` mapped and checked. Slices of a table
    (`Table.part`) can be checked in separate processes; their answers, concatenated in order, are the
    whole table's (with the whole table's `total_rows`)."""
    if spec.payload_kind == batch_pb2.BatchSpec.PAYLOAD_KIND_UNSPECIFIED:
        raise BulkInputError(
            "say which payload kind the rows are", reason="KIND_REQUIRED", field="batch.spec.payloadKind"
        )
    kind = batch_pb2.BatchSpec.PayloadKind.Name(spec.payload_kind).lower()
    mapping = compile_mapping(spec.mapping, table.columns, kind=kind, constants=spec.constants)
    dynamic = spec.mode == stored_qr_code_pb2.QrCode.DYNAMIC
    design = spec.design if spec.HasField("design") else None
    valid: list[ValidRow] = []
    issues: list[RowIssue] = []
    for number, row, content, found in validate_rows(table, mapping, design=design, dynamic=dynamic):
        if content is not None and row is not None:
            valid.append(ValidRow(number, content, dict(zip(table.columns, row, strict=True))))
        issues.extend(found)
    return ParsedBatch(list(table.columns), table.total_rows, valid, issues)


# ---------------------------------------------------------------------------
# Decoding and CSV
# ---------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode(data: bytes) -> tuple[str, str]:
    """The text of `data` and the encoding it was read with: a BOM decides, else strict UTF-8, else
    charset-normalizer's best guess; BulkInputError (UNKNOWN_ENCODING) when nothing reads it."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError as error:
                raise _table_error(
                    f"the file starts with a {encoding.upper()} byte order mark but is not valid "
                    f"{encoding.upper()} (at byte {error.start})",
                    "UNKNOWN_ENCODING",
                ) from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(data).best()
    guess = best.encoding if best is not None and best.encoding else ""
    if guess.lower().replace("-", "_") in _WESTERN or _looks_western(data):
        # Single-byte Western text from spreadsheets is nearly always Windows-1252 (Latin-1 plus quotes, dashes
        # and the euro sign in 0x80-0x9F); detectors often take a short sample of it for something exotic.
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            pass
    if not guess:
        raise _table_error("the file's text encoding could not be recognized; save it as UTF-8", "UNKNOWN_ENCODING")
    return data.decode(guess, errors="replace"), guess


_WESTERN = {
    "latin_1",
    "iso8859_1",
    "iso_8859_1",
    "cp1252",
    "windows_1252",
    "iso8859_15",
    "cp1250",
    "cp850",
    "mac_roman",
}
_WESTERN_SYMBOLS = set(bytes(range(0x80, 0xC0)).decode("cp1252", errors="ignore"))  # quotes, dashes, €, ©, ½, ...


def _looks_western(data: bytes) -> bool:
    """Whether `data` read as Windows-1252 looks like Western text: every non-ASCII character a Latin letter or
    a common symbol, and most letters ASCII (Cyrillic or Greek bytes read this way are all non-ASCII letters)."""
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    letters = wide = 0
    for ch in text:
        if ch.isascii():
            letters += ch.isalpha()
            continue
        if ch in _WESTERN_SYMBOLS:
            continue
        if not ("\u00c0" <= ch <= "\u024f") or ch in "\u00d7\u00f7":
            return False
        letters += 1
        wide += 1
    return letters > 0 and wide <= letters * 0.3


def sniff_delimiter(text: str) -> str:
    """The delimiter of CSV `text`: `csv.Sniffer` on a sample, kept only when the header line has it; else
    the candidate the header line has most of; comma when it has none (a one-column file)."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    header = next((line for line in sample.splitlines() if line.strip()), "")
    counts = {d: header.count(d) for d in DELIMITERS}
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        sniffed = ""
    if sniffed and counts.get(sniffed, 0) > 0:
        return sniffed
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def parse_csv(
    data: bytes,
    *,
    delimiter: str | None = None,
    max_rows: int = MAX_ROWS,
    max_cell_chars: int = MAX_CELL_CHARS,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Table:
    """Read CSV `data` (see the module docstring). More data rows than `max_rows` is TOO_MANY_ROWS for the
    whole table; cells longer than `max_cell_chars` and rows with the wrong number of cells are row issues."""
    if len(data) > max_file_bytes:
        raise _table_error(f"the file is {len(data)} bytes; at most {max_file_bytes} are accepted", "FILE_TOO_LARGE")
    text, encoding = decode(data)
    if "\x00" in text:
        raise _table_error("the file contains NUL characters; is it a spreadsheet rather than CSV?", "NOT_CSV")
    if delimiter is None:
        delimiter = sniff_delimiter(text)
    elif len(delimiter) != 1 or delimiter in '"\r\n':
        raise _table_error("the delimiter must be one character other than a quote or a line break", "BAD_DELIMITER")
    # Cells over `max_cell_chars` are row issues; the csv module's own (process-wide, 128 KiB) field limit is
    # left alone, so a cell over that ends the read as a table error with its line number.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', doublequote=True)
    columns: tuple[str, ...] | None = None
    rows: list[tuple[str, ...]] = []
    numbers: list[int] = []
    issues: list[RowIssue] = []
    number = 0
    try:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if columns is None:
                columns = _header(cells)
                continue
            number += 1
            if number > max_rows:
                raise _too_many_rows(max_rows)
            problem = _row_shape(number, cells, columns, max_cell_chars)
            if problem is not None:
                issues.append(problem)
                continue
            rows.append(tuple(cells[: len(columns)]))
            numbers.append(number)
    except csv.Error as error:
        raise _table_error(f"the file is not valid CSV at line {reader.line_num}: {error}", "BAD_CSV") from None
    if columns is None:
        raise _table_error("the file is empty; its first line must name the columns", "MISSING_HEADER")
    return Table(columns, rows, numbers, issues, number, encoding, delimiter)


def _header(cells: Sequence[str]) -> tuple[str, ...]:
    names = [cell.strip() for cell in cells]
    while names and not names[-1]:
        names.pop()  # trailing delimiters (spreadsheet exports) make empty columns at the end
    if len(names) > MAX_COLUMNS:
        raise _table_error(f"the header has {len(names)} columns; at most {MAX_COLUMNS}", "TOO_MANY_COLUMNS")
    missing = [str(i + 1) for i, name in enumerate(names) if not name]
    if missing:
        raise _table_error(
            f"the header row must name every column; column {', '.join(missing)} has no name", "MISSING_COLUMN_NAME"
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = name.casefold()
        if key in seen:
            raise _table_error(
                f'column "{name}" appears twice in the header row (columns {seen[key] + 1} and {i + 1})',
                "DUPLICATE_COLUMN",
            )
        seen[key] = i
    return tuple(names)


def _row_shape(number: int, cells: Sequence[str], columns: Sequence[str], max_cell_chars: int) -> RowIssue | None:
    if len(cells) > len(columns) and any(cell.strip() for cell in cells[len(columns) :]):
        return RowIssue(
            number,
            "",
            "",
            f"the row has {len(cells)} cells but the header names {len(columns)} columns "
            "(a value with the delimiter in it needs quotes)",
            "TOO_MANY_CELLS",
        )
    if len(cells) < len(columns):
        return RowIssue(
            number,
            "",
            "",
            f"the row has {len(cells)} cells but the header names {len(columns)} columns",
            "TOO_FEW_CELLS",
        )
    for name, cell in zip(columns, cells, strict=False):
        if len(cell) > max_cell_chars:
            return RowIssue(
                number, name, "", f"the value has {len(cell)} characters; at most {max_cell_chars} fit", "CELL_TOO_LONG"
            )
    return None


def parse_json_rows(data: bytes | str, *, max_rows: int = MAX_ROWS, max_cell_chars: int = MAX_CELL_CHARS) -> Table:
    """Read JSON rows: a list of objects of column -> value (strings; numbers and booleans are taken as their
    JSON text, null as empty)."""
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise _table_error(f"the rows are not valid JSON: {error}", "BAD_JSON") from None
    if not isinstance(parsed, list):
        raise _table_error("the rows must be a JSON list of objects", "BAD_JSON")
    return table_from_records(parsed, max_rows=max_rows, max_cell_chars=max_cell_chars)


def table_from_records(
    records: Sequence[object], *, max_rows: int = MAX_ROWS, max_cell_chars: int = MAX_CELL_CHARS
) -> Table:
    """A table from rows of column -> value. Columns are the keys in order of first appearance (compared
    without surrounding spaces); a key a row lacks is an empty cell there."""
    if len(records) > max_rows:
        raise _too_many_rows(max_rows)
    order: dict[str, int] = {}
    kept: list[tuple[int, dict[str, str]]] = []
    issues: list[RowIssue] = []
    for number, item in enumerate(records, start=1):
        if not isinstance(item, Mapping):
            issues.append(RowIssue(number, "", "", "the row must be an object of column -> value", "BAD_ROW"))
            continue
        record: dict[str, str] = {}
        problem: RowIssue | None = None
        for key, value in item.items():
            name = str(key).strip()
            cell = _json_cell(value)
            if not name:
                problem = RowIssue(number, "", "", "a value has an empty column name", "MISSING_COLUMN_NAME")
            elif cell is None:
                problem = RowIssue(number, name, "", "the value must be a string, number or boolean", "BAD_ROW")
            elif len(cell) > max_cell_chars:
                problem = RowIssue(
                    number,
                    name,
                    "",
                    f"the value has {len(cell)} characters; at most {max_cell_chars} fit",
                    "CELL_TOO_LONG",
                )
            if problem is not None:
                break
            record[name] = cell or ""
            order.setdefault(name, len(order))
        if problem is not None:
            issues.append(problem)
            continue
        kept.append((number, record))
    if len(order) > MAX_COLUMNS:
        raise _table_error(f"the rows have {len(order)} columns; at most {MAX_COLUMNS}", "TOO_MANY_COLUMNS")
    columns = tuple(order)
    rows = [tuple(record.get(name, "") for name in columns) for _, record in kept]
    return Table(columns, rows, [number for number, _ in kept], issues, len(records), "utf-8", "")


def _json_cell(value: object) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def _table_error(message: str, reason: str) -> BulkInputError:
    return BulkInputError(message, reason=reason, field=_TABLE_FIELD)


def _too_many_rows(max_rows: int) -> BulkInputError:
    return BulkInputError(
        f"the table has more than {max_rows} data rows; at most {max_rows} are accepted in one batch",
        reason="TOO_MANY_ROWS",
        field=_TABLE_FIELD,
    )


# ---------------------------------------------------------------------------
# Mapping
# ---------------------------------------------------------------------------


def compile_mapping(
    mapping: Mapping[str, str] | Iterable[tuple[str, str]],
    columns: Sequence[str],
    *,
    kind: str = "",
    constants: Mapping[str, str] | None = None,
) -> ColumnMapping:
    """Resolve column -> field path pairs (and field path -> value constants) against `Content`. A path may
    leave out the payload kind ("first_name" with kind "vcard"); every path must be inside the same kind.
    BulkInputError (UNKNOWN_COLUMN, UNKNOWN_FIELD, MIXED_KINDS, EMPTY_MAPPING, ...) names what is wrong."""
    pairs = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    if not pairs:
        raise _mapping_error("the mapping is empty; map at least one column to a field", "EMPTY_MAPPING")
    by_name = {name.casefold(): i for i, name in enumerate(columns)}
    kind = kind.strip()
    if kind:
        kind_field = _field(_CONTENT, kind)
        if kind_field is None:
            kinds = ", ".join(f.name for f in _CONTENT.fields)
            raise BulkInputError(
                f'"{kind}" is not a payload kind; one of {kinds}', reason="UNKNOWN_KIND", field="batch.spec.payloadKind"
            )
        kind = kind_field.name
    targets: list[Target] = []
    seen: dict[str, str] = {}
    for column, path in pairs:
        column = column.strip()
        index = by_name.get(column.casefold())
        if index is None:
            shown = ", ".join(f'"{c}"' for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
            raise _mapping_error(
                f'the mapping names column "{column}", which the table does not have (its columns: {shown})',
                "UNKNOWN_COLUMN",
            )
        target = _target(columns[index], index, path.strip(), kind, _MAPPING_FIELD)
        kind = _same_kind(kind, target, column, path, _MAPPING_FIELD)
        if not target.leaf.is_repeated and target.json_path in seen:
            raise _mapping_error(
                f'columns "{seen[target.json_path]}" and "{column}" both fill {path}', "DUPLICATE_FIELD"
            )
        seen[target.json_path] = column
        targets.append(target)
    fixed: list[tuple[Target, object]] = []
    for path, value in (constants or {}).items():
        target = _target("", -1, path.strip(), kind, _CONSTANTS_FIELD)
        kind = _same_kind(kind, target, "", path, _CONSTANTS_FIELD)
        try:
            fixed.append((target, _convert(target.leaf, value.strip())))
        except _CellError as error:
            raise BulkInputError(
                f"the constant for {path}: {error.message}", reason=error.code, field=_CONSTANTS_FIELD
            ) from None
    targets.sort(key=lambda t: t.index)  # left to right, whatever order the mapping (a proto map) came in
    return ColumnMapping(kind, tuple(targets), tuple(fixed))


def _same_kind(kind: str, target: Target, column: str, path: str, where: str) -> str:
    target_kind = target.fields[0][0].name
    if kind and target_kind != kind:
        who = f'column "{column}" maps to' if column else "the constant"
        raise BulkInputError(
            f"{who} {path}, which is not a field of the {kind} payload", reason="MIXED_KINDS", field=where
        )
    return target_kind


def _mapping_error(message: str, reason: str) -> BulkInputError:
    return BulkInputError(message, reason=reason, field=_MAPPING_FIELD)


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    found = descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)
    if found is None:
        lowered = name.lower()
        found = next((f for f in descriptor.fields if lowered in (f.name.lower(), f.json_name.lower())), None)
    return found


def _target(column: str, index: int, path: str, kind: str, where: str) -> Target:
    parts = path.split(".")
    if parts and parts[0].lower() == "content":
        parts = parts[1:]
    if kind and parts and _field(_CONTENT, parts[0]) is None:
        parts = [kind, *parts]  # "first_name" with kind "vcard"
    descriptor: Descriptor | None = _CONTENT
    resolved: list[tuple[FieldDescriptor, int | None]] = []
    json_parts = ["content"]
    names: list[str] = []
    for position, part in enumerate(parts):
        match = _PATH_PART.fullmatch(part)
        fd = _field(descriptor, match.group(1)) if descriptor is not None and match is not None else None
        if fd is None or match is None:
            raise _unknown_field(column, path, where)
        item = int(match.group(2)) if match.group(2) is not None else None
        if item is not None and not fd.is_repeated:
            raise _unknown_field(column, path, where, f"{fd.name} is not a list")
        if fd.is_repeated and fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                raise _unknown_field(column, path, where, f"{fd.name} is a map")
            item = item or 0
        suffix = f"[{item}]" if item is not None else ""
        json_parts.append(fd.json_name + suffix)
        names.append(fd.name + suffix)
        resolved.append((fd, item))
        if position == len(parts) - 1:
            if fd.message_type is not None and fd.message_type.full_name != _TIMESTAMP:
                inner = ", ".join(f.name for f in fd.message_type.fields)
                raise _unknown_field(column, path, where, f"{fd.name} is a message; name one of its fields ({inner})")
            if fd.type == FieldDescriptor.TYPE_BYTES:
                raise _unknown_field(column, path, where, f"{fd.name} holds bytes, which a cell cannot")
        else:
            descriptor = fd.message_type
            if descriptor is not None and descriptor.full_name == _TIMESTAMP:
                descriptor = None
    if len(resolved) < 2:
        kinds = ", ".join(f.name for f in _CONTENT.fields)
        raise _unknown_field(column, path, where, f"name a field inside a payload kind ({kinds}), e.g. url.url")
    return Target(column, index, tuple(resolved), ".".join(json_parts), ".".join(names))


def _unknown_field(column: str, path: str, where: str, why: str = "") -> BulkInputError:
    who = f'column "{column}" maps to' if column else "a constant names"
    detail = f": {why}" if why else " (the Content message of qrmesh.qr.v1 lists every field)"
    return BulkInputError(
        f'{who} "{path}", which is not a field of QR content{detail}', reason="UNKNOWN_FIELD", field=where
    )


# ---------------------------------------------------------------------------
# Rows to content
# ---------------------------------------------------------------------------


class _CellError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Built:
    """One row made into content: `content` is None when a cell could not be read (see `issues`). `columns`
    maps the JSON path of each filled field (`content.vcard.emails[1]`) to its target, to name columns."""

    content: qr_code_pb2.Content | None
    issues: list[RowIssue]
    columns: dict[str, Target]


def build_content(mapping: ColumnMapping, row: Sequence[str], number: int) -> Built:
    """Row `row` (cells in the table's column order) as `Content`; empty cells leave their field unset.
    Several columns mapped to one repeated field append their non-empty values left to right. Constants
    fill what no cell did; one inside a list item ("vcard.phones[0].type") only when cells made that item,
    so a row without a phone number gets no phone."""
    content = qr_code_pb2.Content()
    getattr(content, mapping.kind).SetInParent()
    issues: list[RowIssue] = []
    filled: dict[str, Target] = {}
    in_items: list[tuple[Target, object]] = []
    for target, value in mapping.constants:
        if any(fd.is_repeated for fd, _ in target.fields[:-1]):
            in_items.append((target, value))
        else:
            filled[_assign(content, target, value)] = target
    for target in mapping.targets:
        cell = row[target.index].strip()
        if not cell:
            continue
        try:
            value = _convert(target.leaf, cell)
        except _CellError as error:
            issues.append(RowIssue(number, target.column, target.path, error.message, error.code))
            continue
        filled[_assign(content, target, value)] = target
    for target, value in in_items:
        if _item_exists_unset(content, target):
            filled[_assign(content, target, value)] = target
    return Built(None if issues else content, issues, filled)


def _item_exists_unset(content: Message, target: Target) -> bool:
    """Whether the list items on `target`'s path exist and its field is not set yet."""
    message = content
    for fd, item in target.fields[:-1]:
        if fd.is_repeated:
            items = getattr(message, fd.name)
            if len(items) <= (item or 0):
                return False
            message = items[item or 0]
        else:
            message = getattr(message, fd.name)
    leaf = target.leaf
    if leaf.is_repeated:
        return len(getattr(message, leaf.name)) == 0
    if leaf.message_type is not None or leaf.has_presence:
        return not message.HasField(leaf.name)
    return bool(getattr(message, leaf.name) == leaf.default_value)


def _assign(content: Message, target: Target, value: object) -> str:
    message = content
    json_parts = ["content"]
    for fd, item in target.fields[:-1]:
        if fd.is_repeated:
            items = getattr(message, fd.name)
            position = item or 0
            while len(items) <= position:
                items.add()
            message = items[position]
            json_parts.append(f"{fd.json_name}[{position}]")
        else:
            message = getattr(message, fd.name)
            json_parts.append(fd.json_name)
    leaf = target.leaf
    if leaf.is_repeated:
        items = getattr(message, leaf.name)
        if isinstance(value, timestamp_pb2.Timestamp):
            items.add().CopyFrom(value)
        else:
            items.append(value)
        json_parts.append(f"{leaf.json_name}[{len(items) - 1}]")
    elif isinstance(value, timestamp_pb2.Timestamp):
        getattr(message, leaf.name).CopyFrom(value)
        json_parts.append(leaf.json_name)
    else:
        setattr(message, leaf.name, value)
        json_parts.append(leaf.json_name)
    return ".".join(json_parts)


def _convert(fd: FieldDescriptor, cell: str) -> object:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return cell
    if fd.type == FieldDescriptor.TYPE_BOOL:
        lowered = cell.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise _CellError("INVALID_BOOLEAN", f'"{_short(cell)}" is not a yes/no value; use true/false, yes/no or 1/0')
    if fd.enum_type is not None:
        wanted = re.sub(r"[\s-]+", "_", cell).upper()
        for value in fd.enum_type.values:
            if value.name == wanted and value.number != 0:
                return value.number
        names = ", ".join(v.name for v in fd.enum_type.values if v.number != 0)
        raise _CellError("INVALID_CHOICE", f'"{_short(cell)}" is not one of {names}')
    if fd.cpp_type in _INTEGERS:
        low, high = _INTEGERS[fd.cpp_type]
        if not _INTEGER.fullmatch(cell):
            raise _CellError("INVALID_NUMBER", f'"{_short(cell)}" is not a whole number')
        whole = int(cell)
        if not low <= whole <= high:
            raise _CellError("INVALID_NUMBER", f"{whole} is out of range")
        return whole
    if fd.cpp_type in _FLOATS:
        text = cell.replace(",", ".") if cell.count(",") == 1 and "." not in cell else cell
        try:
            number = float(text)
        except ValueError:
            raise _CellError("INVALID_NUMBER", f'"{_short(cell)}" is not a number (use a dot for decimals)') from None
        if number != number or number in (float("inf"), float("-inf")):
            raise _CellError("INVALID_NUMBER", f'"{_short(cell)}" is not a finite number')
        return number
    if fd.message_type is not None and fd.message_type.full_name == _TIMESTAMP:
        try:
            moment = datetime.fromisoformat(cell)
        except ValueError:
            raise _CellError(
                "INVALID_TIME", f'"{_short(cell)}" is not a date and time like 2026-05-01T18:00:00+02:00'
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(moment.astimezone(UTC))
        return stamp
    raise _CellError("UNSUPPORTED_FIELD", f"{fd.name} cannot be filled from a cell")


def _short(cell: str) -> str:
    return cell if len(cell) <= 40 else cell[:37] + "..."


# ---------------------------------------------------------------------------
# Validation: the rules of single creation
# ---------------------------------------------------------------------------


def check_content(
    content: qr_code_pb2.Content,
    number: int,
    columns: Mapping[str, Target] | None = None,
    *,
    design: design_pb2.Design | None = None,
    dynamic: bool = False,
) -> list[RowIssue]:
    """What creating one code with `content` would refuse, as row issues: the proto's rules
    (`qrmesh.platform.validation`), then the payload's standard, the design and the symbol's capacity at the
    design's error correction (`qrmesh.qr.rendering.check_renderable`), as `CreateQrCode` checks them. A
    DYNAMIC code's image encodes its short URL, so only the destination is checked (`prepare`); the design is
    checked once per batch."""
    from qrmesh.qr.rendering import check_renderable, prepare

    columns = columns or {}
    found = validation.violations(content, "content.")
    if found:
        return [_issue(number, v, "", columns) for v in found]
    request = qr_code_service_pb2.RenderQrCodeRequest(content=content)
    try:
        if dynamic:
            if content.WhichOneof("kind") != "url":
                return [
                    RowIssue(number, "", "", "a DYNAMIC code needs url content: scans go there", "DYNAMIC_NEEDS_URL")
                ]
            prepare(request)
        else:
            if design is not None:
                request.design.CopyFrom(design)
            check_renderable(request)
    except InvalidArgument as error:
        if not error.violations:
            return [RowIssue(number, "", "", _sentence(error.message), error.reason)]
        return [_issue(number, v, error.reason, columns) for v in error.violations]
    return []


def _issue(number: int, violation: FieldViolation, reason: str, columns: Mapping[str, Target]) -> RowIssue:
    description = violation.description
    if not reason or reason == "INVALID_ARGUMENT":
        reason = "REQUIRED" if description in ("is required", "must not be empty") else "INVALID_VALUE"
    if not violation.field.startswith("content."):
        # The design (or the content as a whole, e.g. too long for any QR symbol): not one column's.
        return RowIssue(number, "", "", _sentence(_phrase(violation.field, description)), reason)
    field = _field_path(violation.field)
    target = _target_for(violation.field, columns)
    return RowIssue(number, target.column if target else "", field, _sentence(_phrase(field, description)), reason)


def _phrase(field: str, description: str) -> str:
    """A description that needs its subject ("is required", "must be ...") gets the field's name in front."""
    if field and description.startswith(("is ", "must ", "has ", "needs ")):
        return f"{field.rsplit('.', 1)[-1].replace('_', ' ')} {description}"
    return description


def _target_for(json_path: str, columns: Mapping[str, Target]) -> Target | None:
    if json_path in columns:
        return columns[json_path]
    for path, target in columns.items():  # a message at fault: the first column filling a field inside it
        if path.startswith((json_path + ".", json_path + "[")):
            return target
    return None


def _field_path(json_path: str) -> str:
    """`content.vcard.firstName` -> `vcard.first_name` (JSON names back to proto names)."""
    if not json_path.startswith("content."):
        return json_path
    descriptor: Descriptor | None = _CONTENT
    out: list[str] = []
    for part in json_path.removeprefix("content.").split("."):
        match = _PATH_PART.fullmatch(part)
        fd = _field(descriptor, match.group(1)) if descriptor is not None and match is not None else None
        if fd is None or match is None:
            out.append(part)
            descriptor = None
            continue
        out.append(fd.name + (f"[{match.group(2)}]" if match.group(2) is not None else ""))
        descriptor = fd.message_type
    return ".".join(out)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def validate_rows(
    table: Table,
    mapping: ColumnMapping,
    *,
    design: design_pb2.Design | None = None,
    dynamic: bool = False,
) -> Iterator[tuple[int, tuple[str, ...] | None, qr_code_pb2.Content | None, list[RowIssue]]]:
    """Every data row in order as (row number, cells or None, content or None, issues); the rows the table
    could not read take their place by number. Linear in the rows: each row is checked on its own."""
    unreadable: dict[int, list[RowIssue]] = {}
    for issue in table.issues:
        unreadable.setdefault(issue.row, []).append(issue)
    pending = sorted(unreadable)
    position = 0
    mapped = {t.json_path: t for t in mapping.targets if not t.leaf.is_repeated}
    for i, number in enumerate(table.numbers):
        while position < len(pending) and pending[position] < number:
            yield pending[position], None, None, unreadable[pending[position]]
            position += 1
        row = table.rows[i]
        built = build_content(mapping, row, number)
        if built.content is None:
            yield number, row, None, built.issues
            continue
        issues = check_content(built.content, number, mapped | built.columns, design=design, dynamic=dynamic)
        yield number, row, (None if issues else built.content), issues
    for number in pending[position:]:
        yield number, None, None, unreadable[number]
