"""Render over gRPC: qrmesh's qr service (full interceptor chain: tracing,
validation, error mapping, proto translation) against a bare grpc.aio server
calling the same renderer, and the renderer alone in-process, all measured in
this run. Uses DATABASE_URL / REDIS_URL when set, the embedded servers otherwise.

    python -m bench.render_rpc [--requests 2000] [--concurrency 16] [--runs 3]

Prints a table and writes bench/results/render_rpc.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.api import httpbody_pb2

from bench.report import Figure, Sample, emit
from bench.servers import engines
from qrmesh.platform.server import create_server
from qrmesh.platform.settings import Settings
from qrmesh.qr import server as qr_server
from qrmesh.qr.domain.design import Design
from qrmesh.qr.domain.render import RenderOptions, render
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc

URL = "https://example.com/campaign/spring?utm_source=poster"
REQUEST = qr_code_service_pb2.RenderQrCodeRequest(
    content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url=URL)), size=512
)
METHOD = "/qrmesh.qr.v1.QrCodeService/RenderQrCode"


def plain_png() -> bytes:
    return render(URL, Design(), RenderOptions(size=512)).data


async def bare_server() -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with no interceptors that calls the renderer directly."""

    async def handle(request: Any, context: Any) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="image/png", data=await asyncio.to_thread(plain_png))

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        handle, qr_code_service_pb2.RenderQrCodeRequest.FromString, httpbody_pb2.HttpBody.SerializeToString
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("qrmesh.qr.v1.QrCodeService", {"RenderQrCode": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def load(port: int, requests: int, concurrency: int) -> dict[str, float]:
    """Send `requests` calls over one channel, `concurrency` at a time."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = qr_code_service_pb2_grpc.QrCodeServiceStub(channel)
        await stub.RenderQrCode(REQUEST)  # warm up
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                await stub.RenderQrCode(REQUEST)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def in_process(requests: int) -> dict[str, float]:
    began = time.perf_counter()
    for _ in range(requests):
        plain_png()
    elapsed = time.perf_counter() - began
    return {"rps": requests / elapsed, "p50_ms": elapsed / requests * 1000, "p99_ms": float("nan")}


async def measure(runs: int, fn: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, Sample]:
    """Each reading's median over `runs` runs, with its spread."""
    samples = [await fn() for _ in range(runs)]
    return {key: Sample.of([s[key] for s in samples]) for key in samples[0]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qrmesh-bench-") as tmp, engines(Path(tmp)) as (database_url, redis_url):
        # Anonymous callers are rate-limited by address: rates no run reaches, so every call still pays the
        # limiter's Redis round trip but none is refused.
        settings = Settings(
            service="qr",
            database_url=database_url,
            redis_url=redis_url,
            port=0,
            rate_anonymous_per_second=1e6,
            rate_anonymous_burst=1_000_000,
        )
        ours, our_port = await create_server(settings, qr_server.SPEC)
        await ours.start()
        bare, bare_port = await bare_server()
        try:
            alone = await measure(args.runs, lambda: asyncio.to_thread(in_process, args.requests // 4))
            base = await measure(args.runs, lambda: load(bare_port, args.requests, args.concurrency))
            mine = await measure(args.runs, lambda: load(our_port, args.requests, args.concurrency))
        finally:
            await ours.stop(0)
            await bare.stop(0)

    print(f"RenderQrCode PNG 512px, {args.requests} calls x {args.runs} runs, concurrency {args.concurrency}")
    bare_name = "bare grpc.aio + same renderer"
    figures = [
        Figure("RenderQrCode, qr service", "req/s", mine["rps"], bare_name, base["rps"]),
        Figure("RenderQrCode, qr service", "ms p50", mine["p50_ms"], bare_name, base["p50_ms"], higher_is_better=False),
        Figure("RenderQrCode, qr service", "ms p99", mine["p99_ms"], bare_name, base["p99_ms"], higher_is_better=False),
        Figure("bare grpc.aio + renderer", "req/s", base["rps"], "renderer in-process", alone["rps"]),
    ]
    emit("render_rpc", figures, args=vars(args))


if __name__ == "__main__":
    asyncio.run(main())
