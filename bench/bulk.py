"""Bulk generation end to end: a CSV of 10,000 URL rows -> CreateBatch -> WatchBatch until DONE ->
DownloadBatch (a ZIP of PNGs), against a real qr service process (with identity and billing, PostgreSQL
and Redis), beside the bare loop in one process: the same 10,000 PNGs made with segno into a zipfile.
Also the peak resident memory of the qr process and its render workers, beside the bare loop's.

    python -m bench.bulk [--rows 10000] [--runs 2] [--vcard]

`--vcard` adds a figure for 10,000 vCard rows (four columns each). Uses DATABASE_URL / REDIS_URL when
set, the embedded servers otherwise. Prints a table and writes bench/results/bulk.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import resource
import signal
import sys
import tempfile
import time
import zipfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import segno
import uvloop

from bench.report import Figure, Sample, emit
from bench.servers import Service, engines, service_env
from qrmesh.billing.admin import grant_plan
from qrmesh.billing.v1 import billing_service_pb2
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.qr.v1 import batch_pb2, batch_service_pb2, batch_service_pb2_grpc, stored_qr_code_pb2

PASSWORD = "a-long-and-unusual-passphrase-7"  # noqa: S105 - a throwaway account
TARGET_SECONDS = 30.0
"""Issue 10: 10,000 rows to a ZIP of PNGs in at most 30 s on this machine."""
SIZE = 512
"""Image width in pixels (the batch default)."""
T = TypeVar("T")
_DONE = {batch_pb2.Batch.DONE, batch_pb2.Batch.FAILED, batch_pb2.Batch.CANCELED}


def url_rows(rows: int) -> list[str]:
    """The destinations, one per row."""
    return [f"https://example.com/products/{i:06d}?utm_source=qr" for i in range(1, rows + 1)]


def url_csv(rows: int) -> bytes:
    return ("name,url\n" + "".join(f"p{i},{url}\n" for i, url in enumerate(url_rows(rows), start=1))).encode()


def vcard_csv(rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["First name", "Last name", "Email", "Mobile"])
    for i in range(1, rows + 1):
        writer.writerow([f"Zoë{i}", f"Ångström{i}", f"person{i}@example.com", f"+46 70 {i:07d}"])
    return out.getvalue().encode()


def bare_loop(rows: int, target: Path) -> None:
    """The baseline: segno renders each row's URL to a PNG of about SIZE pixels, written into a ZIP."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for i, url in enumerate(url_rows(rows), start=1):
            code = segno.make(url, error="m", micro=False)
            width = code.symbol_size(border=4)[0]
            buffer = io.BytesIO()
            code.save(buffer, kind="png", scale=max(1, SIZE // width), border=4)
            archive.writestr(f"p{i}.png", buffer.getvalue())


def bare_child(rows: int, target: Path, report: Path) -> None:
    """The bare loop as the baseline process runs it: its seconds and peak RSS (MiB) written to `report`."""
    began = time.perf_counter()
    bare_loop(rows, target)
    seconds = time.perf_counter() - began
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    report.write_text(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


async def run_bare(rows: int, workdir: Path) -> tuple[float, float]:
    """The bare loop in a process of its own: (seconds, peak RSS in MiB); killed if the benchmark is stopped."""
    report = workdir / "bare.json"
    report.unlink(missing_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bulk", "--bare", str(rows), str(workdir / "bare.zip"), str(report)
    )
    try:
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if code != 0:
        raise RuntimeError(f"the bare loop failed ({code})")
    measured = json.loads(report.read_text())
    return float(measured["seconds"]), float(measured["peak_mib"])


def tree_peak_mib(pid: int) -> tuple[float, float]:
    """(peak RSS of `pid`, sum of the peaks of `pid` and its descendants) in MiB, from /proc (Linux)."""

    def peak(process: int) -> float:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return 0.0
        return 0.0

    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    family = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    return peak(pid), sum(peak(p) for p in family)


async def account(identity_port: int) -> tuple[str, str]:
    """A user with an organization: (access token, organization name)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_port}") as channel:
        auth = identity_service_pb2_grpc.AuthServiceStub(channel)
        email = f"bench-bulk-{time.time_ns()}@example.com"
        await auth.SignUp(identity_service_pb2.SignUpRequest(email=email, password=PASSWORD, display_name="bench"))
        session = await auth.Login(identity_service_pb2.LoginRequest(email=email, password=PASSWORD))
        organizations = identity_service_pb2_grpc.OrganizationServiceStub(channel)
        organization = await organizations.CreateOrganization(
            identity_service_pb2.CreateOrganizationRequest(organization=identity_pb2.Organization(display_name="b")),
            metadata=(("authorization", f"Bearer {session.access_token}"),),
        )
    return session.access_token, organization.name


async def one_batch(
    port: int, token: str, organization: str, data: bytes, spec: batch_pb2.BatchSpec, target: Path
) -> dict[str, float]:
    """Upload, follow and download one batch: seconds in all and per step, and the archive's size."""
    metadata = (("authorization", f"Bearer {token}"),)
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = batch_service_pb2_grpc.BatchServiceStub(channel)
        began = time.perf_counter()
        batch = await stub.CreateBatch(
            batch_service_pb2.CreateBatchRequest(
                parent=organization, batch=batch_pb2.Batch(display_name="bench", spec=spec), csv_data=data
            ),
            metadata=metadata,
            timeout=300,
        )
        created = time.perf_counter()
        while batch.state not in _DONE:
            async for update in stub.WatchBatch(
                batch_service_pb2.WatchBatchRequest(name=batch.name), metadata=metadata
            ):
                batch = update
                if batch.state in _DONE:
                    break
        if batch.state != batch_pb2.Batch.DONE:
            raise RuntimeError(f"the batch ended {batch_pb2.Batch.State.Name(batch.state)}: {batch.error}")
        done = time.perf_counter()
        size = 0
        with target.open("wb") as sink:
            async for chunk in stub.DownloadBatch(
                batch_service_pb2.DownloadBatchRequest(name=batch.name), metadata=metadata
            ):
                sink.write(chunk.data)
                size += len(chunk.data)
        ended = time.perf_counter()
    with zipfile.ZipFile(target) as archive:
        images = sum(1 for name in archive.namelist() if name.endswith(".png"))
    if images != batch.valid_rows:
        raise RuntimeError(f"the archive has {images} images for {batch.valid_rows} rows")
    return {
        "seconds": ended - began,
        "create_s": created - began,
        "run_s": done - created,
        "download_s": ended - done,
        "zip_mib": size / 2**20,
        "images": float(images),
    }


async def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[Figure], dict[str, object]]:
    with engines(workdir) as (database_url, redis_url):
        env = service_env(database_url, redis_url)
        env |= {"QRMESH_RATE_USER_PER_SECOND": "1000000", "QRMESH_RATE_USER_BURST": "1000000"}
        env["QRMESH_QR_BATCH_STREAM"] = f"bench-batches-{time.time_ns()}"
        services: list[Service] = []
        try:
            billing = Service("billing", workdir, env)
            services.append(billing)
            env["QRMESH_IDENTITY_BILLING_ADDR"] = env["QRMESH_QR_BILLING_ADDR"] = f"127.0.0.1:{billing.port}"
            identity = Service("identity", workdir, env)
            services.append(identity)
            env["QRMESH_IDENTITY_ADDR"] = f"127.0.0.1:{identity.port}"
            qr = Service("qr", workdir, env)
            services.append(qr)
            token, organization = await account(identity.port)
            await grant_plan(
                f"127.0.0.1:{billing.port}",
                env["QRMESH_SERVICE_SECRET"],
                billing_service_pb2.GrantPlanRequest(
                    organization=organization, plan="plans/business", reason="benchmark"
                ),
            )
            static = stored_qr_code_pb2.QrCode.STATIC
            url_spec = batch_pb2.BatchSpec(
                payload_kind=batch_pb2.BatchSpec.URL, mapping={"url": "url.url"}, mode=static, size=SIZE
            )
            url_spec.file_name_template = "{name}"
            variants: list[tuple[str, bytes, batch_pb2.BatchSpec]] = [("URL", url_csv(args.rows), url_spec)]
            if args.vcard:
                vcard_spec = batch_pb2.BatchSpec(
                    payload_kind=batch_pb2.BatchSpec.VCARD,
                    mapping={
                        "First name": "first_name",
                        "Last name": "last_name",
                        "Email": "emails",
                        "Mobile": "phones[0].number",
                    },
                    mode=static,
                    size=SIZE,
                )
                variants.append(("vCard", vcard_csv(args.rows), vcard_spec))
            ours: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
            bare: list[tuple[float, float]] = []
            for run in range(args.runs):  # interleaved, so drift hits both alike
                bare.append(await run_bare(args.rows, workdir))
                for name, data, spec in variants:
                    result = await one_batch(qr.port, token, organization, data, spec, workdir / f"ours-{run}.zip")
                    result["qr_peak_mib"], result["tree_peak_mib"] = tree_peak_mib(qr.process.pid)
                    ours[name].append(result)
                    print(f"run {run + 1} {name}: {result}", flush=True)
        finally:
            for service in reversed(services):
                service.stop()

    def sample(runs: list[dict[str, float]], key: str) -> Sample:
        return Sample.of([run[key] for run in runs])

    bare_seconds = Sample.of([seconds for seconds, _ in bare])
    bare_rss = Sample.of([rss for _, rss in bare])
    figures: list[Figure] = []
    base = "segno loop into a zipfile"
    for name, runs in ours.items():
        seconds = sample(runs, "seconds")
        figures.append(
            Figure(
                f"{args.rows:,} {name} rows -> ZIP of PNGs",
                "s",
                seconds,
                base,
                bare_seconds,
                higher_is_better=False,
                target=f"<= {TARGET_SECONDS:.0f} s" if name == "URL" else "",
                met=(seconds.median <= TARGET_SECONDS) if name == "URL" else None,
                details={key: sample(runs, key).median for key in ("create_s", "run_s", "download_s", "zip_mib")},
            )
        )
    url_runs = ours["URL"]
    figures.append(
        Figure(
            "peak RSS, qr process + render workers",
            "MiB",
            sample(url_runs, "tree_peak_mib"),
            "segno loop, one process",
            bare_rss,
            higher_is_better=False,
            details={"qr_process_alone_mib": sample(url_runs, "qr_peak_mib").median},
        )
    )
    return figures, {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


async def stoppable(work: Coroutine[Any, Any, T]) -> T:
    """`work`, canceled on SIGTERM or SIGINT so its cleanups run (service processes stopped, engines shut)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, task.cancel)
    try:
        return await task
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--vcard", action="store_true", help="also a batch of vCard rows")
    parser.add_argument("--bare", nargs=3, metavar=("ROWS", "TARGET", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_child(int(args.bare[0]), Path(args.bare[1]), Path(args.bare[2]))
        return
    with tempfile.TemporaryDirectory(prefix="qrmesh-bench-") as tmp:
        try:
            figures, extra = uvloop.run(stoppable(measure(args, Path(tmp))))
        except asyncio.CancelledError:
            print("stopped; every process it started is stopped too", file=sys.stderr)
            sys.exit(1)
    print(f"{args.rows} rows x {args.runs} runs; the qr service, its database, Redis and the client share the CPUs")
    emit("bulk", figures, args={k: v for k, v in vars(args).items() if k != "bare"}, extra=extra)


if __name__ == "__main__":
    main()
