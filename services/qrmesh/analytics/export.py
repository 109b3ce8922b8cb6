"""Exports behind ExportScans: raw scans or a breakdown, as CSV or XLSX, streamed in chunks.

CSV (RFC 4180, UTF-8, a header row) is written as the rows come from a server-side cursor, so
memory stays bounded whatever the range holds; every text cell a spreadsheet could run as a
formula is neutralized (`platform.cells`). XLSX is written with xlsxwriter in constant-memory mode
to a temporary file (in a worker thread, a batch of rows at a time), then streamed; its cells are
written as strings, never as formulas. A sheet holds at most 1,048,576 rows: a larger export is
refused before any byte is sent.

Times are written in ISO 8601 in the request's time zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import xlsxwriter

from qrmesh.analytics import store_read
from qrmesh.analytics.domain.breakdown import ranked
from qrmesh.analytics.queries import Queries, Query
from qrmesh.analytics.scope import code_name
from qrmesh.analytics.v1 import analytics_pb2
from qrmesh.platform.cells import neutralize
from qrmesh.platform.errors import FailedPrecondition
from qrmesh.scans.v1 import scan_event_pb2

CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CHUNK_BYTES = 256 * 1024
"""Bytes per streamed chunk."""
XLSX_MAX_ROWS = 1_048_576
"""Rows of one sheet, the header included."""
RAW_HEADER = tuple("qr_code" if column == "qr_code_id" else column for column in store_read.EXPORT_COLUMNS)
Cell = str | int | float
Outcome = scan_event_pb2.ScanEvent.Outcome


def local_time(moment: datetime, zone: ZoneInfo) -> str:
    """An instant in ISO 8601 in `zone`, to the millisecond."""
    return moment.astimezone(zone).isoformat(timespec="milliseconds")


def raw_row(row: Any, organization: str, zone: ZoneInfo) -> list[Cell]:
    """One stored scan as export cells, in the order of RAW_HEADER."""
    values = row._mapping
    outcome = int(values["outcome"])
    return [
        local_time(values["time"], zone),
        str(values["event_id"]),
        code_name(organization, values["qr_code_id"]),
        values["short_code"],
        Outcome.Name(outcome) if outcome in Outcome.values() else str(outcome),  # type: ignore[arg-type]
        values["destination_url"],
        values["matched_rule"],
        values["country"],
        values["region"],
        values["city"],
        values["device_type"],
        values["device_brand"],
        values["os"],
        values["browser"],
        values["language"],
        values["referrer"],
        "true" if values["bot"] else "false",
        values["visitor_id"],
        values["ip_address"],
        values["user_agent"],
    ]


def breakdown_header(dimension: int) -> tuple[str, ...]:
    """The header of a breakdown export: the dimension's name, then the numbers."""
    return (analytics_pb2.Dimension.Name(dimension).lower(), "scans", "unique_visitors", "share")  # type: ignore[arg-type]


class CsvChunks:
    """CSV text encoded and cut into chunks of about CHUNK_BYTES."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def add(self, cells: Sequence[Cell]) -> bytes | None:
        """Add a row; a chunk once enough is buffered."""
        self._writer.writerow([neutralize(cell) if isinstance(cell, str) else cell for cell in cells])
        if self._buffer.tell() >= CHUNK_BYTES:
            return self.take()
        return None

    def take(self) -> bytes:
        """Everything buffered, as UTF-8."""
        data = self._buffer.getvalue().encode("utf-8")
        self._buffer.seek(0)
        self._buffer.truncate()
        return data


class XlsxFile:
    """A one-sheet workbook in a temporary file, written in constant-memory mode (rows in order)."""

    def __init__(self, header: Sequence[str]) -> None:
        handle, self.path = tempfile.mkstemp(suffix=".xlsx", prefix="qrmesh-export-")
        os.close(handle)
        self.workbook = xlsxwriter.Workbook(self.path, {"constant_memory": True, "in_memory": False})
        self.sheet = self.workbook.add_worksheet("scans")
        self.bold = self.workbook.add_format({"bold": True})
        self.rows = 0
        self.write([str(name) for name in header], bold=True)

    def write(self, cells: Sequence[Cell], *, bold: bool = False) -> None:
        """Add one row (text as strings: a cell starting with '=' stays text)."""
        if self.rows >= XLSX_MAX_ROWS:
            raise FailedPrecondition(
                f"more than {XLSX_MAX_ROWS - 1:,} rows: an XLSX sheet cannot hold them; export CSV or a shorter range",
                reason="EXPORT_TOO_LARGE",
            )
        for column, cell in enumerate(cells):
            if isinstance(cell, str):
                self.sheet.write_string(self.rows, column, cell, self.bold if bold else None)
            else:
                self.sheet.write_number(self.rows, column, cell)
        self.rows += 1

    def write_all(self, rows: Iterable[Sequence[Cell]]) -> None:
        for cells in rows:
            self.write(cells)

    def close(self) -> None:
        self.workbook.close()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Exports:
    """Raw-scan and breakdown exports over the queries' database."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries

    async def rows(self, query: Query, dimension: int) -> tuple[tuple[str, ...], AsyncGenerator[list[list[Cell]]]]:
        """The header and batches of rows of an export: a breakdown (every value) or raw scans."""
        if dimension:
            entries = ranked(await self.queries.values(query, dimension))

            async def values() -> AsyncGenerator[list[list[Cell]]]:
                yield [[entry.value, entry.scans, entry.uniques, round(entry.share, 6)] for entry in entries]

            return breakdown_header(dimension), values()
        return RAW_HEADER, self._raw(query)

    async def _raw(self, query: Query) -> AsyncGenerator[list[list[Cell]]]:
        organization, zone = query.scope.organization_id, query.zone
        async with self.queries.engine.connect() as connection:
            async for batch in store_read.stream_scans(
                query.scope, query.start, query.end, connection=connection, include_bots=query.include_bots
            ):
                yield [raw_row(row, organization, zone) for row in batch]

    async def csv(self, query: Query, dimension: int) -> AsyncIterator[bytes]:
        """The export as CSV chunks."""
        header, batches = await self.rows(query, dimension)
        chunks = CsvChunks()
        chunks.add(header)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for cells in batch:
                    chunk = chunks.add(cells)
                    if chunk is not None:
                        yield chunk
        yield chunks.take()

    async def xlsx(self, query: Query, dimension: int) -> AsyncIterator[bytes]:
        """The export as XLSX chunks (written whole first, so a refusal comes before any byte)."""
        header, batches = await self.rows(query, dimension)
        book = await asyncio.to_thread(XlsxFile, header)
        try:
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    await asyncio.to_thread(book.write_all, batch)
            await asyncio.to_thread(book.close)
            with open(book.path, "rb") as handle:  # noqa: ASYNC230 - reads below run in a thread
                while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                    yield chunk
        finally:
            await asyncio.to_thread(book.remove)


__all__ = ["CSV_TYPE", "XLSX_TYPE", "Exports", "local_time", "raw_row"]
