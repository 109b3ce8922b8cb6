"""What a batch's outputs are made of: file names from a template, made safe and unique, a ZIP archive
written as a stream, and the manifest's CSV lines. Pure: no I/O beyond the bytes handed back."""

from __future__ import annotations

import csv
import io
import re
import string
import unicodedata
import zipfile
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import IO, cast

from qrmesh.platform.cells import neutralize

MAX_NAME = 100
"""Characters of a file name before its extension."""
DEFAULT_TEMPLATE = "{row}"
MANIFEST_HEADER = ("row", "qr_code", "short_url", "payload", "file_name")

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]+')
_SPACES = re.compile(r"\s+")
_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    "conin$",
    "conout$",
    *(f"{port}{i}" for port in ("com", "lpt") for i in (*range(1, 10), "\u00b9", "\u00b2", "\u00b3")),
}
"""Windows device names: a file named so, whatever its extension ("nul.txt", "CON.tar.gz"), is the device."""


def check_template(template: str, columns: Iterable[str]) -> list[str]:
    """Placeholders of `template` that are neither `row` nor a column (empty when all are known)."""
    known = {*columns, "row"}
    return [name for name in _PLACEHOLDER.findall(template) if name not in known]


def fill(template: str, values: Mapping[str, str], row: int) -> str:
    """`template` with `{row}` and `{column}` replaced by the row's values (unknown placeholders: empty)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(row) if name == "row" else values.get(name, "")

    return _PLACEHOLDER.sub(value, template)


def safe_name(text: str, row: int) -> str:
    """`text` as a file name: no path separators, `..`, control or reserved characters, at most MAX_NAME
    characters; the row number when nothing is left."""
    name = unicodedata.normalize("NFC", text)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name)
    name = _SPACES.sub(" ", name).strip(" .")
    while ".." in name:
        name = name.replace("..", ".")
    name = name[:MAX_NAME].strip(" .")
    if not name:
        return str(row)
    stem, dot, rest = name.partition(".")
    if stem.rstrip(" ").lower() in _RESERVED:
        # The device name is what comes before the first dot: change that part ("nul.txt" -> "nul_7.txt").
        return f"{stem.rstrip(' ')}_{row}{dot}{rest}"[:MAX_NAME].rstrip(" .")
    return name


class UniqueNames:
    """Hands out file names unique without regard to case (archives are unpacked on such file systems)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def take(self, name: str, row: int) -> str:
        """`name`, or `name-{row}` (then `-2`, `-3`, ...) when taken."""
        candidate = name
        suffix = 0
        while candidate.casefold() in self._taken:
            suffix += 1
            tail = f"-{row}" if suffix == 1 else f"-{row}-{suffix}"
            candidate = name[: MAX_NAME - len(tail)] + tail
        self._taken.add(candidate.casefold())
        return candidate


def file_names(template: str, rows: Iterable[tuple[int, Mapping[str, str]]]) -> list[str]:
    """The safe, unique file name (without extension) of each (row number, values), in order."""
    names = UniqueNames()
    return [names.take(safe_name(fill(template or DEFAULT_TEMPLATE, values, row), row), row) for row, values in rows]


def display_name(template: str, file_name: str, values: Mapping[str, str], row: int) -> str:
    """A code's display name: the template filled in (at most 200 characters), else its file name."""
    if not template:
        return file_name
    text = "".join(ch for ch in fill(template, values, row) if unicodedata.category(ch)[0] != "C")
    return _SPACES.sub(" ", text).strip()[:200] or file_name


def manifest_line(cells: Iterable[str | int]) -> bytes:
    """One CSV line of the manifest (UTF-8), formula-like text neutralized."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(
        [neutralize(cell) if isinstance(cell, str) else cell for cell in cells]
    )
    return buffer.getvalue().encode("utf-8")


def manifest_header() -> bytes:
    """The manifest's header line, with a BOM so spreadsheets read UTF-8."""
    return b"\xef\xbb\xbf" + manifest_line(MANIFEST_HEADER)


class _Sink:
    """A write-only file object collecting what zipfile writes (not seekable, so zipfile streams)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class ZipStream:
    """A ZIP archive written entry by entry; `take()` hands back the bytes written so far. PNG and PDF are
    stored (already compressed), everything else deflated."""

    def __init__(self, when: datetime) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(cast(IO[bytes], self._sink), mode="w", allowZip64=True)
        self._when = (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)

    def add(self, name: str, data: bytes) -> None:
        """Add one file."""
        info = zipfile.ZipInfo(name, date_time=self._when)
        stored = name.endswith((".png", ".pdf"))
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, data, compress_type=info.compress_type, compresslevel=None if stored else 6)

    def open(self, name: str) -> IO[bytes]:
        """A writable entry for a file whose size is not known yet (deflated, ZIP64-ready)."""
        info = zipfile.ZipInfo(name, date_time=self._when)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        return self._zip.open(info, mode="w", force_zip64=True)

    def take(self) -> bytes:
        """The bytes written since the last call."""
        return self._sink.take()

    def close(self) -> bytes:
        """Write the central directory; the last bytes."""
        self._zip.close()
        return self._sink.take()


EXTENSIONS = {"PNG": "png", "SVG": "svg", "PDF": "pdf"}
CONTENT_TYPES = {"PNG": "image/png", "SVG": "image/svg+xml", "PDF": "application/pdf"}
PRINTABLE = set(string.printable)
