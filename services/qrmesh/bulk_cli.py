"""`qrmesh bulk FILE`: many QR codes from a CSV file (or JSON rows) against a running stack.

The command uploads the table with a column mapping (`BatchService.CreateBatch`), prints the rows that
fail validation as a table, follows the batch with a progress bar (`WatchBatch`), then downloads the ZIP
of images (`DownloadBatch`) and, if asked, the manifest of created codes (`DownloadBatchManifest`).

It talks gRPC to the edge (`QRMESH_ADDR`, default 127.0.0.1:8080, where Envoy passes native gRPC through)
or straight to the qr service, as the organization `QRMESH_ORGANIZATION`, with an API key
(`QRMESH_API_KEY`, sent as `x-api-key`; it needs the `qr:write` and `qr:read` scopes) or an access token
(`QRMESH_TOKEN`, sent as `authorization: Bearer`). Options override the variables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format
from google.rpc import error_details_pb2
from tqdm import tqdm

from qrmesh.platform.interceptors import rich_status
from qrmesh.qr.v1 import (
    batch_pb2,
    batch_service_pb2,
    batch_service_pb2_grpc,
    design_pb2,
    stored_qr_code_pb2,
)

DEFAULT_ADDRESS = "127.0.0.1:8080"
"""The edge of `make run`."""
_TERMINAL = {batch_pb2.Batch.DONE, batch_pb2.Batch.FAILED, batch_pb2.Batch.CANCELED}
_FORMATS = {"png": batch_pb2.BatchSpec.PNG, "svg": batch_pb2.BatchSpec.SVG, "pdf": batch_pb2.BatchSpec.PDF}
_KINDS = [v.name.lower() for v in batch_pb2.BatchSpec.PayloadKind.DESCRIPTOR.values if v.number != 0]
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
_RETRIES = 6
"""Broken progress streams reopened in a row before giving up."""
_CALL_TIMEOUT = 120.0
MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""The largest request a qrmesh server receives (its gRPC receive limit): a bigger table is refused up front."""
"""Seconds for unary calls (the upload is validated before the answer)."""


if TYPE_CHECKING:
    Stub = batch_service_pb2_grpc.BatchServiceAsyncStub


class UsageError(Exception):
    """Bad options or files: exit status 2."""


@dataclass(slots=True)
class BulkOptions:
    """Everything `qrmesh bulk` needs; `run_bulk` takes it so tests can call the command without a shell."""

    file: Path
    organization: str
    address: str = DEFAULT_ADDRESS
    api_key: str = ""
    token: str = ""
    tls: bool = False
    kind: str = ""
    mapping: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    design: design_pb2.Design | None = None
    dynamic: bool = False
    format: str = "png"
    size: int = 0
    name_template: str = ""
    display_name_template: str = ""
    folder: str = ""
    tags: list[str] = field(default_factory=list)
    template: str = ""
    display_name: str = ""
    skip_invalid: bool = False
    validate_only: bool = False
    out: Path | None = None
    manifest: Path | None = None
    request_id: str = ""
    progress: bool = True

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The credentials the calls carry."""
        if self.api_key:
            return (("x-api-key", self.api_key),)
        if self.token:
            return (("authorization", f"Bearer {self.token}"),)
        return ()


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `qrmesh bulk`."""
    bulk = commands.add_parser(
        "bulk",
        help="create many QR codes from a CSV file and download their images",
        description=(
            "Create QR codes from the rows of a CSV file (or a .json list of objects) against a running stack: "
            "the rows are validated first (problems printed by row and column), then the codes are created in "
            "the background with a progress bar, and the images are downloaded as a ZIP. Credentials: "
            "QRMESH_API_KEY (an API key with qr:write and qr:read) or QRMESH_TOKEN (an access token); "
            "QRMESH_ORGANIZATION and QRMESH_ADDR (default 127.0.0.1:8080, the edge) say where."
        ),
    )
    bulk.add_argument("file", type=Path, help="the table: CSV (any common encoding and delimiter) or .json rows")
    bulk.add_argument("--kind", choices=_KINDS, help="the payload kind every row becomes (e.g. url, vcard, wifi)")
    bulk.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COLUMN=FIELD",
        help='which column fills which field, e.g. "First name=vcard.first_name" (repeat for each column)',
    )
    bulk.add_argument(
        "--const",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help='a value every row gets, e.g. "wifi.security=WPA" (repeatable)',
    )
    bulk.add_argument("--design", type=Path, help="a JSON file with the design (as in the REST API's `design`)")
    bulk.add_argument("--dynamic", action="store_true", help="dynamic codes (url rows only): short links you can edit")
    bulk.add_argument("--format", choices=sorted(_FORMATS), default="png", help="image format in the ZIP")
    bulk.add_argument("--size", type=int, default=0, help="image width in pixels (64-4096; 512 when not given)")
    bulk.add_argument(
        "--name-template", default="", help='file names in the ZIP, e.g. "{Last name}-{row}" (default "{row}")'
    )
    bulk.add_argument("--display-name-template", default="", help="each code's display name (default: file name)")
    bulk.add_argument("--folder", default="", help="the folder the codes go in, e.g. campaigns/2026")
    bulk.add_argument("--tag", action="append", default=[], help="a tag every code gets (repeatable)")
    bulk.add_argument("--template", default="", help="a saved batch template (organizations/.../batchTemplates/...)")
    bulk.add_argument("--display-name", default="", help="a name for the batch")
    bulk.add_argument("--skip-invalid", action="store_true", help="create the valid rows even if some are invalid")
    bulk.add_argument("--validate-only", action="store_true", help="only check the rows; create nothing")
    bulk.add_argument("--out", type=Path, help="where the ZIP goes (default: FILE with .zip)")
    bulk.add_argument("--manifest", type=Path, help="also download the manifest CSV of created codes here")
    bulk.add_argument("--request-id", default="", help="makes a retry safe: the same id answers the same batch")
    bulk.add_argument("--organization", help="organizations/{id} (default: QRMESH_ORGANIZATION)")
    bulk.add_argument(
        "--address", help=f"host:port of the edge or qr service (default: QRMESH_ADDR or {DEFAULT_ADDRESS})"
    )
    bulk.add_argument(
        "--api-key-file", type=Path, help="read the API key from this file (instead of QRMESH_API_KEY; never argv)"
    )
    bulk.add_argument("--tls", action="store_true", help="connect with TLS (an edge behind HTTPS)")
    bulk.add_argument("--no-progress", action="store_true", help="no progress bar")
    bulk.set_defaults(handler=lambda args: bulk_command(args, os.environ))


def bulk_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run `qrmesh bulk`: 0 when the codes were created and downloaded (or the rows are valid with
    --validate-only), 1 when rows are invalid or the batch failed, 2 on bad options or configuration."""
    try:
        options = options_from_args(args, environ)
    except UsageError as error:
        print(f"qrmesh bulk: {error}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        return asyncio.run(run_bulk(options))
    except KeyboardInterrupt:
        print("qrmesh bulk: interrupted; the batch keeps running on the server", file=sys.stderr)  # noqa: T201
        return 130


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f'{what} "{item}" must look like NAME=VALUE')
        pairs[key.strip()] = value.strip()
    return pairs


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> BulkOptions:
    """The options of a parsed command line, with the environment's defaults; UsageError when unusable."""
    organization = (args.organization or environ.get("QRMESH_ORGANIZATION", "")).strip()
    if not organization:
        raise UsageError("say which organization: --organization or QRMESH_ORGANIZATION")
    if not organization.startswith("organizations/"):
        organization = f"organizations/{organization}"
    api_key = environ.get("QRMESH_API_KEY", "").strip()
    if args.api_key_file is not None:
        try:
            api_key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise UsageError(f"--api-key-file: {error}") from None
    token = environ.get("QRMESH_TOKEN", "").strip()
    if not api_key and not token:
        raise UsageError(
            "no credentials: set QRMESH_API_KEY (an API key), --api-key-file or QRMESH_TOKEN (an access token)"
        )
    if not args.file.is_file():
        raise UsageError(f"{args.file} is not a file")
    if not args.template and not args.kind:
        raise UsageError("say which payload kind the rows are (--kind url, vcard, wifi, ...) or use --template")
    mapping = _pairs(args.map, "--map")
    if not args.template and not mapping:
        raise UsageError('map at least one column to a field, e.g. --map "Link=url.url"')
    design = None
    if args.design is not None:
        try:
            design = json_format.Parse(args.design.read_text(encoding="utf-8"), design_pb2.Design())
        except (OSError, json_format.ParseError) as error:
            raise UsageError(f"--design {args.design}: {error}") from None
    return BulkOptions(
        file=args.file,
        organization=organization,
        address=(args.address or environ.get("QRMESH_ADDR", "") or DEFAULT_ADDRESS).strip(),
        api_key=api_key,
        token=token,
        tls=args.tls,
        kind=args.kind or "",
        mapping=mapping,
        constants=_pairs(args.const, "--const"),
        design=design,
        dynamic=args.dynamic,
        format=args.format,
        size=args.size,
        name_template=args.name_template,
        display_name_template=args.display_name_template,
        folder=args.folder,
        tags=list(args.tag),
        template=args.template,
        display_name=args.display_name,
        skip_invalid=args.skip_invalid,
        validate_only=args.validate_only,
        out=args.out,
        manifest=args.manifest,
        request_id=args.request_id,
        progress=not args.no_progress,
    )


def build_request(options: BulkOptions) -> batch_service_pb2.CreateBatchRequest:
    """The CreateBatch request for `options` (the file is read here)."""
    batch = batch_pb2.Batch(display_name=options.display_name or options.file.name[:200], template=options.template)
    if not options.template:
        spec = batch.spec
        spec.payload_kind = batch_pb2.BatchSpec.PayloadKind.Value(options.kind.upper())
        spec.mapping.update(options.mapping)
        spec.constants.update(options.constants)
        if options.design is not None:
            spec.design.CopyFrom(options.design)
        spec.mode = stored_qr_code_pb2.QrCode.DYNAMIC if options.dynamic else stored_qr_code_pb2.QrCode.STATIC
        spec.format = _FORMATS[options.format]
        spec.size = options.size
        spec.file_name_template = options.name_template
        spec.display_name_template = options.display_name_template
        spec.folder = options.folder
        spec.tags.extend(options.tags)
    request = batch_service_pb2.CreateBatchRequest(
        parent=options.organization,
        batch=batch,
        validate_only=options.validate_only,
        skip_invalid_rows=options.skip_invalid,
        request_id=options.request_id or str(uuid.uuid4()),
    )
    data = options.file.read_bytes()
    if options.file.suffix.lower() == ".json":
        try:
            rows = json.loads(data)
        except ValueError as error:
            raise UsageError(f"{options.file} is not valid JSON: {error}") from None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise UsageError(f"{options.file} must be a JSON list of objects (one per row)")
        for row in rows:
            request.rows.rows.add().values.update({str(k): "" if v is None else _cell(v) for k, v in row.items()})
    else:
        request.csv_data = data
    size = request.ByteSize()
    if size > MAX_REQUEST_BYTES:
        raise UsageError(
            f"{options.file} makes a request of {size / 2**20:.1f} MiB; the server accepts at most"
            f" {MAX_REQUEST_BYTES // 2**20} MiB per batch: split the table into smaller files"
        )
    return request


def _cell(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


async def run_bulk(options: BulkOptions, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The whole command against the stack at `options.address`; see `bulk_command` for the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        request = build_request(options)
    except (UsageError, OSError) as error:
        print(f"qrmesh bulk: {error}", file=err)
        return 2
    metadata = options.metadata()
    async with _channel(options) as channel:
        stub: Stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        try:
            return await _drive(stub, request, metadata, options, out, err)
        except grpc.aio.AioRpcError as error:
            print(f"qrmesh bulk: {_describe(error)}", file=err)
            return 2 if error.code() == grpc.StatusCode.INVALID_ARGUMENT else 1


async def _drive(
    stub: Stub,
    request: batch_service_pb2.CreateBatchRequest,
    metadata: tuple[tuple[str, str], ...],
    options: BulkOptions,
    out: TextIO,
    err: TextIO,
) -> int:
    """Create the batch (or only check it), print its row errors, follow it and download its outputs."""
    try:
        batch = await stub.CreateBatch(request, metadata=metadata, timeout=_CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        if _reason(error) != "INVALID_ROWS":
            raise
        # Nothing was created: ask for every row's problems (the refusal carries the first 100 only).
        request.validate_only = True
        checked = await stub.CreateBatch(request, metadata=metadata, timeout=_CALL_TIMEOUT)
        print_row_errors(checked.row_errors, checked.invalid_rows, out)
        print(
            f"{checked.invalid_rows} of {checked.total_rows} rows are invalid; nothing was created "
            "(fix them, or --skip-invalid to create the valid rows)",
            file=err,
        )
        return 1
    if options.validate_only:
        print_row_errors(batch.row_errors, batch.invalid_rows, out)
        print(f"{batch.valid_rows} of {batch.total_rows} rows are valid", file=out)
        return 1 if batch.invalid_rows else 0
    print(f"{batch.name}: {batch.valid_rows} codes", file=out)
    try:
        if batch.invalid_rows:
            errors = await _all_row_errors(stub, batch, metadata)
            print_row_errors(errors, batch.invalid_rows, out)
            print(f"{batch.invalid_rows} invalid rows skipped; {batch.valid_rows} codes to create", file=out)
        return await _finish(stub, batch, metadata, options, out, err)
    except grpc.aio.AioRpcError as error:
        print(f"qrmesh bulk: {_describe(error)} (the batch is {batch.name})", file=err)
        return 1


async def _finish(
    stub: Stub,
    batch: batch_pb2.Batch,
    metadata: tuple[tuple[str, str], ...],
    options: BulkOptions,
    out: TextIO,
    err: TextIO,
) -> int:
    """Follow the batch to its end, then download its archive (and manifest)."""
    batch = await watch(stub, batch, metadata, progress=options.progress, err=err)
    if batch.state != batch_pb2.Batch.DONE:
        state = batch_pb2.Batch.State.Name(batch.state)
        print(f"qrmesh bulk: the batch is {state}{': ' + batch.error if batch.error else ''}", file=err)
        return 1
    target = options.out or options.file.with_suffix(".zip")
    size = await download(
        stub.DownloadBatch(batch_service_pb2.DownloadBatchRequest(name=batch.name), metadata=metadata), target
    )
    print(f"{target}: {batch.processed_rows} codes, {size} bytes", file=out)
    if options.manifest is not None:
        call = stub.DownloadBatchManifest(
            batch_service_pb2.DownloadBatchManifestRequest(name=batch.name), metadata=metadata
        )
        size = await download(call, options.manifest)
        print(f"{options.manifest}: manifest, {size} bytes", file=out)
    return 0


def _channel(options: BulkOptions) -> grpc.aio.Channel:
    channel_options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    if options.tls:
        return grpc.aio.secure_channel(options.address, grpc.ssl_channel_credentials(), options=channel_options)
    return grpc.aio.insecure_channel(options.address, options=channel_options)


async def _all_row_errors(
    stub: Stub, batch: batch_pb2.Batch, metadata: tuple[tuple[str, str], ...]
) -> list[batch_pb2.RowError]:
    errors: list[batch_pb2.RowError] = []
    token = ""
    while True:
        page = await stub.ListBatchRowErrors(
            batch_service_pb2.ListBatchRowErrorsRequest(parent=batch.name, page_size=1000, page_token=token),
            metadata=metadata,
            timeout=_CALL_TIMEOUT,
        )
        errors.extend(page.row_errors)
        token = page.next_page_token
        if not token:
            return errors


async def watch(
    stub: Stub,
    batch: batch_pb2.Batch,
    metadata: tuple[tuple[str, str], ...],
    *,
    progress: bool = True,
    err: TextIO | None = None,
) -> batch_pb2.Batch:
    """Follow `batch` with WatchBatch until it is DONE, FAILED or CANCELED, with a progress bar of created
    codes. A stream that ends early or breaks (a restarted server, a proxy in between) is opened again, up
    to `_RETRIES` times in a row with growing pauses."""
    bar = tqdm(total=batch.valid_rows, unit="code", disable=not progress, file=err or sys.stderr, dynamic_ncols=True)
    failures = 0
    try:
        while batch.state not in _TERMINAL:
            call = stub.WatchBatch(batch_service_pb2.WatchBatchRequest(name=batch.name), metadata=metadata)
            try:
                async for update in call:
                    failures = 0
                    batch = update
                    bar.total = batch.valid_rows
                    bar.set_postfix_str(batch_pb2.Batch.State.Name(batch.state).lower(), refresh=False)
                    bar.update(batch.processed_rows - bar.n)
                    if batch.state in _TERMINAL:
                        break
            except grpc.aio.AioRpcError as error:
                if error.code() not in _TRANSIENT or failures >= _RETRIES:
                    raise
                failures += 1
                await asyncio.sleep(min(10.0, 0.5 * 2**failures))
            if batch.state not in _TERMINAL:
                batch = await stub.GetBatch(
                    batch_service_pb2.GetBatchRequest(name=batch.name), metadata=metadata, timeout=_CALL_TIMEOUT
                )
                bar.update(batch.processed_rows - bar.n)
    finally:
        bar.close()
    return batch


async def download(call: AsyncIterable[httpbody_pb2.HttpBody], target: Path) -> int:
    """Write a streamed HttpBody answer to `target` (through a temporary file, renamed when complete)."""
    partial = target.with_name(target.name + ".part")
    size = 0
    try:
        with partial.open("wb") as sink:
            async for chunk in call:
                sink.write(chunk.data)
                size += len(chunk.data)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return size


def print_row_errors(errors: Sequence[batch_pb2.RowError], total: int, out: TextIO) -> None:
    """Row errors as a table: row, column, problem (code)."""
    if not errors:
        return
    rows = [(str(e.row), e.column or "-", f"{e.reason} ({e.code})" if e.code else e.reason) for e in errors]
    width_row = max(3, *(len(r[0]) for r in rows))
    width_column = min(30, max(6, *(len(r[1]) for r in rows)))
    print(f"{'row':>{width_row}}  {'column':<{width_column}}  problem", file=out)
    for row, column, problem in rows:
        if len(column) > width_column:
            column = column[: width_column - 1] + "…"
        print(f"{row:>{width_row}}  {column:<{width_column}}  {problem}", file=out)
    if total > len(errors):
        print(f"... and {total - len(errors)} more", file=out)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rich_status(error)
    if status is None:
        return ""
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def _describe(error: grpc.aio.AioRpcError) -> str:
    reason = _reason(error)
    return f"{error.code().name}{f' ({reason})' if reason else ''}: {error.details()}"
