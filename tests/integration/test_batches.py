"""Bulk generation over real servers: rows validated before anything is stored, codes created by background
workers from a Redis stream, progress streamed, a ZIP whose images decode to their rows, plan limits,
cancel, and a worker stopped mid-batch whose chunks another finishes without losing or doubling codes."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import os
import secrets
import signal
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
import redis.asyncio
import sqlalchemy as sa
import zxingcpp
from google.protobuf import field_mask_pb2
from PIL import Image
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from qrmesh.events.v1 import event_pb2
from qrmesh.platform.database import create_engine
from qrmesh.platform.server import Server
from qrmesh.platform.settings import Settings
from qrmesh.qr import batch_store
from qrmesh.qr import server as qr_server_module
from qrmesh.qr.batch_render import Pool, render_chunk, warm_up
from qrmesh.qr.batches import MAX_PREVIEW_ERRORS
from qrmesh.qr.domain import ids
from qrmesh.qr.v1 import (
    batch_pb2,
    batch_service_pb2,
    batch_service_pb2_grpc,
    design_pb2,
    qr_code_pb2,
    qr_code_service_pb2,
    qr_code_service_pb2_grpc,
    stored_qr_code_pb2,
)
from tests.integration.billing_helpers import error_info, subscribe
from tests.integration.identity_helpers import Account, sign_up
from tests.integration.qr_helpers import reason, violations

Spec = batch_pb2.BatchSpec
Batch = batch_pb2.Batch
QrCode = stored_qr_code_pb2.QrCode


def url_spec(**fields: object) -> Spec:
    """URL rows from the `link` column, files named after `name`."""
    return Spec(
        payload_kind=Spec.URL,
        mapping={"link": "url.url"},
        file_name_template="{name}-{row}",
        **fields,  # type: ignore[arg-type]
    )


def table(rows: list[tuple[str, str]]) -> bytes:
    """A CSV with a `name` and a `link` column."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "link"])
    writer.writerows(rows)
    return out.getvalue().encode()


def good_rows(count: int, prefix: str = "item") -> list[tuple[str, str]]:
    token = secrets.token_hex(3)
    return [(f"{prefix} {i}", f"https://example.com/{token}/{i}") for i in range(count)]


@dataclasses.dataclass
class Clients:
    batches: batch_service_pb2_grpc.BatchServiceAsyncStub
    codes: qr_code_service_pb2_grpc.QrCodeServiceAsyncStub
    account: Account


@pytest.fixture(scope="module")
async def owner(identity_server: Server, billing_server: Server) -> Account:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        account = await sign_up(channel, "bulk")
    await subscribe(billing_server, account, "business")
    return account


@pytest.fixture(scope="module")
async def qr(qr_server: Server, owner: Account) -> AsyncIterator[Clients]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{qr_server.port}") as channel:
        yield Clients(
            batch_service_pb2_grpc.BatchServiceStub(channel),
            qr_code_service_pb2_grpc.QrCodeServiceStub(channel),
            owner,
        )


async def create(qr: Clients, data: bytes, spec: Spec, **fields: object) -> Batch:
    request = batch_service_pb2.CreateBatchRequest(
        parent=qr.account.organization,
        batch=Batch(display_name="test batch", spec=spec),
        csv_data=data,
        **fields,  # type: ignore[arg-type]
    )
    answer: Batch = await qr.batches.CreateBatch(request, metadata=qr.account.metadata())
    return answer


WATCH_LIMIT = 60.0
"""Seconds a test follows a batch at most: a stuck batch fails its test instead of hanging the run."""


async def watch(qr: Clients, name: str) -> list[Batch]:
    seen = []
    call = qr.batches.WatchBatch(batch_service_pb2.WatchBatchRequest(name=name), metadata=qr.account.metadata())
    async with asyncio.timeout(WATCH_LIMIT):
        async for message in call:
            seen.append(message)
    return seen


async def download(qr: Clients, name: str) -> zipfile.ZipFile:
    call = qr.batches.DownloadBatch(batch_service_pb2.DownloadBatchRequest(name=name), metadata=qr.account.metadata())
    data = b"".join([chunk.data async for chunk in call])
    return zipfile.ZipFile(io.BytesIO(data))


def decoded(data: bytes) -> str:
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(data)))
    assert results, "no QR code found in the image"
    return str(results[0].text)


async def test_invalid_rows_are_listed_and_nothing_is_stored(qr: Clients) -> None:
    rows = good_rows(5)
    rows[1] = ("broken", "javascript:alert(1)")
    rows[3] = ("empty", "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(qr, table(rows), url_spec())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(caught.value) == "INVALID_ROWS"
    assert error_info(caught.value).metadata["count"] == "2"
    fields = violations(caught.value)
    assert fields == ["rows[2].link", "rows[4].link"]
    listed = await qr.batches.ListBatches(
        batch_service_pb2.ListBatchesRequest(parent=qr.account.organization), metadata=qr.account.metadata()
    )
    assert all(batch.display_name != "test batch" or batch.total_rows != 5 for batch in listed.batches)

    preview = await create(qr, table(rows), url_spec(), validate_only=True)
    assert (preview.total_rows, preview.valid_rows, preview.invalid_rows, preview.name) == (5, 3, 2, "")
    assert [(e.row, e.column) for e in preview.row_errors] == [(2, "link"), (4, "link")]


async def test_a_validate_only_answer_lists_a_bounded_number_of_row_errors(qr: Clients) -> None:
    rows = [(f"bad {i}", "not a url") for i in range(MAX_PREVIEW_ERRORS + 200)]
    preview = await create(qr, table(rows), url_spec(), validate_only=True)
    assert (preview.total_rows, preview.valid_rows, preview.invalid_rows) == (len(rows), 0, len(rows))
    assert len(preview.row_errors) == MAX_PREVIEW_ERRORS
    assert [e.row for e in preview.row_errors[:3]] == [1, 2, 3]


async def test_a_dead_render_process_is_replaced() -> None:
    pool = Pool(1)
    try:
        pid = await pool.run(warm_up)
        os.kill(pid, signal.SIGKILL)  # killed (the OOM killer, an operator): its executor is broken for good
        content = qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="https://example.com/after")).SerializeToString()
        [image] = await pool.run(render_chunk, design_pb2.Design().SerializeToString(), Spec.PNG, 128, [content])
        assert decoded(image) == "https://example.com/after"
        assert await pool.run(warm_up) != pid
    finally:
        await pool.close()


async def completed_event(settings: Settings, name: str) -> event_pb2.Event:
    """The `batch.completed` event of batch `name` on the events stream (the outbox relay is asynchronous and
    backs off up to 30 s after a failure)."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        for _ in range(900):
            for _, fields in await client.xrange(settings.events_stream) or []:
                raw = (fields or {})[b"event"]
                event = event_pb2.Event.FromString(raw if isinstance(raw, bytes) else raw.encode())
                if event.type == "batch.completed" and event.subject == name:
                    return event
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError(f"no batch.completed event for {name}")


async def test_valid_rows_become_codes_with_progress_and_a_zip(qr: Clients, settings: Settings) -> None:
    rows = good_rows(12)
    rows[5] = ("bad", "not a url")
    batch = await create(qr, table(rows), url_spec(folder="bulk/test", tags=["bulk"]), skip_invalid_rows=True)
    assert (batch.total_rows, batch.valid_rows, batch.invalid_rows) == (12, 11, 1)
    assert batch.state in (Batch.RUNNING, Batch.DONE)

    seen = await watch(qr, batch.name)
    assert seen[-1].state == Batch.DONE
    assert seen[-1].processed_rows == 11
    assert [m.processed_rows for m in seen] == sorted(m.processed_rows for m in seen)

    errors = await qr.batches.ListBatchRowErrors(
        batch_service_pb2.ListBatchRowErrorsRequest(parent=batch.name), metadata=qr.account.metadata()
    )
    assert [(e.row, e.column, e.code != "") for e in errors.row_errors] == [(6, "link", True)]
    assert errors.total_size == 1

    archive = await download(qr, batch.name)
    names = archive.namelist()
    assert names[-1] == "manifest.csv"
    assert len(names) == 12
    manifest = list(csv.reader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))
    assert manifest[0] == ["row", "qr_code", "short_url", "payload", "file_name"]
    by_row = {int(line[0]): line for line in manifest[1:]}
    assert sorted(by_row) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]
    for number in (1, 7, 12):
        line = by_row[number]
        name, link = rows[number - 1]
        assert line[4] == f"{name}-{number}.png"
        assert line[3] == link
        assert decoded(archive.read(line[4])) == link

    listed = await qr.codes.ListQrCodes(
        qr_code_service_pb2.ListQrCodesRequest(parent=qr.account.organization, folder="bulk/test", page_size=100),
        metadata=qr.account.metadata(),
    )
    assert sorted(code.name for code in listed.qr_codes) == sorted(line[1] for line in manifest[1:])

    completed = await completed_event(settings, batch.name)
    assert completed.organization == qr.account.organization
    assert completed.data["processedRows"] == 11


async def test_dynamic_batches_encode_short_links(qr: Clients, redirect_server: Server) -> None:
    rows = good_rows(4)
    batch = await create(qr, table(rows), url_spec(mode=QrCode.DYNAMIC, format=Spec.PNG))
    seen = await watch(qr, batch.name)
    assert seen[-1].state == Batch.DONE
    archive = await download(qr, batch.name)
    manifest = list(csv.reader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))[1:]
    assert len(manifest) == 4
    for line in manifest:
        assert line[2]
        assert decoded(archive.read(line[4])) == line[2]
        code = await qr.codes.GetQrCode(
            qr_code_service_pb2.GetQrCodeRequest(name=line[1]), metadata=qr.account.metadata()
        )
        assert code.kind == QrCode.DYNAMIC
        assert code.short_url == line[2]
        assert code.content.url.url == line[3]


async def test_plan_limits(identity_server: Server, billing_server: Server, qr_server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_server.port}") as channel:
        free = await sign_up(channel, "bulk-free")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{qr_server.port}") as channel:
        clients = Clients(
            batch_service_pb2_grpc.BatchServiceStub(channel), qr_code_service_pb2_grpc.QrCodeServiceStub(channel), free
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(clients, table(good_rows(2)), url_spec())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(caught.value) == "PLAN_LIMIT_REACHED"

        await subscribe(billing_server, free, "pro")  # 1,000 rows, 500 dynamic codes
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(clients, table(good_rows(1001)), url_spec())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(clients, table(good_rows(501)), url_spec(mode=QrCode.DYNAMIC))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(caught.value).metadata["limit"] == "500"


async def test_a_code_whose_short_code_is_taken_is_refused_not_skipped(settings: Settings, qr_server: Server) -> None:
    """insert_codes skips only ids that exist (a chunk run again); a clash on another unique column (a short
    code) must fail the chunk's transaction, never leave a row CREATED without its code."""
    engine = create_engine(settings.database_url, schema="qr")
    organization = ids.new_id()
    now = datetime.now(UTC)
    short = f"t{secrets.token_hex(4)}"

    def code(code_id: str) -> dict[str, object]:
        return {
            "id": code_id,
            "organization_id": organization,
            "display_name": "",
            "kind": "DYNAMIC",
            "content": b"",
            "design": b"",
            "folder": "",
            "tags": [],
            "tag_keys": [],
            "status": "ACTIVE",
            "short_code": short,
            "rules": b"",
            "password_hash": None,
            "max_scans": 0,
            "claimed_scans": 0,
            "redirect_type": "FOUND",
            "scan_count": 0,
            "revision": 1,
            "created_at": now,
            "updated_at": now,
        }

    first = ids.new_id()
    try:
        async with AsyncSession(engine) as session, session.begin():
            claimed = await batch_store.claim_short_codes(
                [(short, first), (short, ids.new_id())], session=session, organization_id=organization, now=now
            )
            assert claimed == {short}
            await batch_store.insert_codes([code(first)], session=session)
        async with AsyncSession(engine) as session, session.begin():
            await batch_store.insert_codes([code(first)], session=session)  # the same id again: left alone
        with pytest.raises(sa_exc.IntegrityError):
            async with AsyncSession(engine) as session, session.begin():
                await batch_store.insert_codes([code(ids.new_id())], session=session)
    finally:
        async with engine.begin() as connection:
            await connection.execute(sa.text("DELETE FROM qr_codes WHERE organization_id = :o"), {"o": organization})
            await connection.execute(sa.text("DELETE FROM short_codes WHERE organization_id = :o"), {"o": organization})
        await engine.dispose()


async def test_the_installation_row_cap_applies_below_the_plan(settings: Settings, owner: Account) -> None:
    stream = f"test-batches-{secrets.token_hex(4)}"
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        async with private_qr(settings, stream, owner, BATCH_MAX_ROWS="5", BATCH_WORKERS="0") as capped:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await create(capped, table(good_rows(6)), url_spec(), validate_only=True)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason(caught.value) == "TOO_MANY_ROWS"
            assert "5" in (caught.value.details() or "")
            preview = await create(capped, table(good_rows(5)), url_spec(), validate_only=True)
            assert preview.valid_rows == 5
    finally:
        await client.delete(stream)
        await client.aclose()


@contextlib.asynccontextmanager
async def private_qr(settings: Settings, stream: str, owner: Account, **extra: str) -> AsyncIterator[Clients]:
    """A qr server of its own whose batch workers use `stream` (chunks of 10 rows, idle chunks taken over
    after 0.5 s)."""
    merged = {
        **settings.extra,
        "BATCH_STREAM": stream,
        "BATCH_CHUNK_ROWS": "10",
        "BATCH_CLAIM_IDLE_MS": "500",
        "BATCH_BLOCK_MS": "100",
        "BATCH_WORKERS": "1",
        **extra,
    }
    server, _ = await qr_server_module.create_server(dataclasses.replace(settings, extra=merged))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Clients(
                batch_service_pb2_grpc.BatchServiceStub(channel),
                qr_code_service_pb2_grpc.QrCodeServiceStub(channel),
                owner,
            )
    finally:
        await server.stop(0)


async def count_codes(qr: Clients, folder: str) -> int:
    listed = await qr.codes.ListQrCodes(
        qr_code_service_pb2.ListQrCodesRequest(parent=qr.account.organization, folder=folder, page_size=1),
        metadata=qr.account.metadata(),
    )
    return listed.total_size


async def test_cancel_stops_a_batch(settings: Settings, owner: Account) -> None:
    stream = f"test-batches-{secrets.token_hex(4)}"
    folder = f"cancel/{secrets.token_hex(4)}"
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        async with private_qr(settings, stream, owner, BATCH_WORKERS="0") as idle:
            batch = await create(idle, table(good_rows(40)), url_spec(folder=folder))
            assert batch.state == Batch.RUNNING
            canceled = await idle.batches.CancelBatch(
                batch_service_pb2.CancelBatchRequest(name=batch.name), metadata=owner.metadata()
            )
            assert canceled.state == Batch.CANCELED
            assert await client.xlen(stream) == 4
        async with private_qr(settings, stream, owner) as busy:
            seen = await watch(busy, batch.name)
            assert [m.state for m in seen] == [Batch.CANCELED]
            for _ in range(600):  # the worker takes every chunk and skips it
                if not await client.xlen(stream):
                    break
                await asyncio.sleep(0.05)
            assert await client.xlen(stream) == 0
            final = await busy.batches.GetBatch(
                batch_service_pb2.GetBatchRequest(name=batch.name), metadata=owner.metadata()
            )
            assert (final.state, final.processed_rows) == (Batch.CANCELED, 0)
            assert await count_codes(busy, folder) == 0
            assert (await download(busy, batch.name)).namelist() == ["manifest.csv"]
    finally:
        await client.delete(stream)
        await client.aclose()


async def test_templates_round_trip(qr: Clients) -> None:
    meta = qr.account.metadata()
    template = await qr.batches.CreateBatchTemplate(
        batch_service_pb2.CreateBatchTemplateRequest(
            parent=qr.account.organization,
            batch_template=batch_pb2.BatchTemplate(display_name="links", spec=url_spec()),
        ),
        metadata=meta,
    )
    assert template.name.startswith(f"{qr.account.organization}/batchTemplates/")
    batch = await qr.batches.CreateBatch(
        batch_service_pb2.CreateBatchRequest(
            parent=qr.account.organization,
            batch=Batch(display_name="from a template", template=template.name),
            csv_text=table(good_rows(3)).decode(),
        ),
        metadata=meta,
    )
    assert batch.spec.mapping["link"] == "url.url"
    assert (await watch(qr, batch.name))[-1].state == Batch.DONE
    changed = batch_pb2.BatchTemplate(name=template.name, display_name="renamed", etag=template.etag)
    updated = await qr.batches.UpdateBatchTemplate(
        batch_service_pb2.UpdateBatchTemplateRequest(
            batch_template=changed, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
        ),
        metadata=meta,
    )
    assert updated.display_name == "renamed"
    assert updated.spec == template.spec
    listed = await qr.batches.ListBatchTemplates(
        batch_service_pb2.ListBatchTemplatesRequest(parent=qr.account.organization), metadata=meta
    )
    assert [t.name for t in listed.batch_templates] == [template.name]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await qr.batches.DeleteBatchTemplate(
            batch_service_pb2.DeleteBatchTemplateRequest(name=template.name, etag=template.etag), metadata=meta
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    await qr.batches.DeleteBatchTemplate(
        batch_service_pb2.DeleteBatchTemplateRequest(name=template.name), metadata=meta
    )


async def test_a_worker_stopped_mid_batch_loses_and_doubles_nothing(settings: Settings, owner: Account) -> None:
    stream = f"test-batches-{secrets.token_hex(4)}"
    folder = f"restart/{secrets.token_hex(4)}"
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    database = await asyncpg.connect(
        make_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        async with private_qr(settings, stream, owner, BATCH_WORKERS="0") as idle:
            batch = await create(idle, table(good_rows(120)), url_spec(mode=QrCode.DYNAMIC, folder=folder))
        # The rows of the 7th chunk (of 10) are locked here: the one worker does chunks in order, finishes six
        # and waits in the 7th, which is where its server is stopped (no timing involved).
        lock = database.transaction()
        await lock.start()
        await database.execute(
            "SELECT 1 FROM qr.batch_rows WHERE batch_id = $1 AND seq >= 60 AND seq < 70 FOR UPDATE",
            batch.name.rsplit("/", 1)[1],
        )
        async with private_qr(settings, stream, owner) as first:
            call = first.batches.WatchBatch(
                batch_service_pb2.WatchBatchRequest(name=batch.name), metadata=owner.metadata()
            )
            async with asyncio.timeout(WATCH_LIMIT):
                async for progress in call:
                    if progress.processed_rows >= 60:
                        break
            call.cancel()
        await lock.rollback()
        async with private_qr(settings, stream, owner) as second:
            stopped = await second.batches.GetBatch(
                batch_service_pb2.GetBatchRequest(name=batch.name), metadata=owner.metadata()
            )
            assert (stopped.state, stopped.processed_rows) == (Batch.RUNNING, 60)
            seen = await watch(second, batch.name)
            assert (seen[-1].state, seen[-1].processed_rows) == (Batch.DONE, 120)
            archive = await download(second, batch.name)
            assert await count_codes(second, folder) == 120
    finally:
        await database.close()
        await client.delete(stream)
        await client.aclose()
    manifest = list(csv.reader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))[1:]
    assert sorted(int(line[0]) for line in manifest) == list(range(1, 121))
    assert len({line[1] for line in manifest}) == 120
    assert len({line[2] for line in manifest}) == 120
    for line in manifest[::30]:
        assert decoded(archive.read(line[4])) == line[2]


async def test_a_batch_whose_queue_was_lost_is_queued_again(settings: Settings, owner: Account) -> None:
    stream = f"test-batches-{secrets.token_hex(4)}"
    folder = f"lost/{secrets.token_hex(4)}"
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    other_stream = f"test-batches-{secrets.token_hex(4)}"
    try:
        async with private_qr(settings, other_stream, owner, BATCH_WORKERS="0") as elsewhere:
            other = await create(elsewhere, table(good_rows(5)), url_spec(folder=f"{folder}-other"))
        async with private_qr(settings, stream, owner, BATCH_WORKERS="0") as idle:
            batch = await create(idle, table(good_rows(25)), url_spec(folder=folder))
        await client.delete(stream, other_stream)  # Redis lost the queue (a flush, a failover without persistence)
        async with private_qr(settings, stream, owner, BATCH_STALL_SECONDS="1", BATCH_SWEEP_INTERVAL="1") as busy:
            seen = await watch(busy, batch.name)
            assert (seen[-1].state, seen[-1].processed_rows) == (Batch.DONE, 25)
            assert await count_codes(busy, folder) == 25
            # The sweep that queued `batch` again saw `other` stalled too (older, as idle): it belongs to another
            # stream (its own installation's sweeper queues it), so this one left it alone.
            untouched = await busy.batches.GetBatch(
                batch_service_pb2.GetBatchRequest(name=other.name), metadata=owner.metadata()
            )
            assert (untouched.state, untouched.processed_rows) == (Batch.RUNNING, 0)
            assert await client.xlen(other_stream) == 0
            assert await client.xlen(stream) == 0
            await busy.batches.CancelBatch(
                batch_service_pb2.CancelBatchRequest(name=other.name), metadata=owner.metadata()
            )
    finally:
        await client.delete(stream, other_stream)
        await client.aclose()
