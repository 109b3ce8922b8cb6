"""A typical API call over gRPC: GetQrCode on the qr service with its whole chain (metrics, tracing,
error mapping, authentication of a bearer token, authorization against the organization, rate limit,
validation, a PostgreSQL read, proto translation) against a bare grpc.aio server answering the same
bytes with nothing in between. Both run as processes of their own on uvloop; the client is this process.

    python -m bench.grpc_call [--requests 3000] [--concurrency 16] [--runs 3]

Uses DATABASE_URL / REDIS_URL when set, the embedded servers otherwise.
Prints a table and writes bench/results/grpc_call.json.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from bench.report import Figure, Sample, emit
from bench.servers import Service, engines, service_env
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.qr.v1 import qr_code_pb2, qr_code_service_pb2, qr_code_service_pb2_grpc, stored_qr_code_pb2

PASSWORD = "a-long-and-unusual-passphrase-7"  # noqa: S105 - a throwaway account
SERVICE = "qrmesh.qr.v1.QrCodeService"


def serve_echo(answer_file: Path, port_file: Path) -> None:
    """The baseline: grpc.aio on uvloop, one generic handler that returns fixed bytes."""
    answer = answer_file.read_bytes()

    async def handle(request: bytes, context: Any) -> bytes:
        return answer

    async def main() -> None:
        server = grpc.aio.server()
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(handle)  # raw bytes
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"GetQrCode": handler})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(str(port))  # noqa: ASYNC240 - once, before serving
        await server.wait_for_termination()

    uvloop.run(main())


async def prepare(identity_port: int, qr_port: int) -> tuple[str, str, bytes]:
    """A user with an organization and a stored code: (token, code name, the code's bytes)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_port}") as channel:
        auth = identity_service_pb2_grpc.AuthServiceStub(channel)
        email = f"bench-{time.time_ns()}@example.com"
        await auth.SignUp(identity_service_pb2.SignUpRequest(email=email, password=PASSWORD, display_name="bench"))
        session = await auth.Login(identity_service_pb2.LoginRequest(email=email, password=PASSWORD))
        token = session.access_token
        organizations = identity_service_pb2_grpc.OrganizationServiceStub(channel)
        organization = await organizations.CreateOrganization(
            identity_service_pb2.CreateOrganizationRequest(organization=identity_pb2.Organization(display_name="b")),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{qr_port}") as channel:
        stub = qr_code_service_pb2_grpc.QrCodeServiceStub(channel)
        code = await stub.CreateQrCode(
            qr_code_service_pb2.CreateQrCodeRequest(
                parent=organization.name,
                qr_code=stored_qr_code_pb2.QrCode(
                    display_name="Spring poster",
                    content=qr_code_pb2.Content(url=qr_code_pb2.UrlPayload(url="https://example.com/spring")),
                    tags=["spring", "print"],
                ),
            ),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    return token, code.name, code.SerializeToString()


async def load(port: int, name: str, token: str, requests: int, concurrency: int) -> dict[str, float]:
    """`requests` GetQrCode calls over one channel, `concurrency` at a time."""
    latencies: list[float] = []
    request = qr_code_service_pb2.GetQrCodeRequest(name=name)
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = qr_code_service_pb2_grpc.QrCodeServiceStub(channel)
        for _ in range(50):  # warm up: connections, caches
            await stub.GetQrCode(request, metadata=metadata)
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                await stub.GetQrCode(request, metadata=metadata)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def measure(args: argparse.Namespace, workdir: Path) -> list[Figure]:
    with engines(workdir) as (database_url, redis_url):
        env = service_env(database_url, redis_url)
        # The limiter runs (it is part of the chain) but must not refuse the benchmark's one user.
        env |= {"QRMESH_RATE_USER_PER_SECOND": "1000000", "QRMESH_RATE_USER_BURST": "1000000"}
        services: list[Service] = []
        echo: subprocess.Popen[bytes] | None = None
        try:
            services.append(Service("identity", workdir, env))
            env["QRMESH_IDENTITY_ADDR"] = f"127.0.0.1:{services[0].port}"
            services.append(Service("qr", workdir, env))
            token, name, answer = await prepare(services[0].port, services[1].port)
            (workdir / "answer.bin").write_bytes(answer)
            port_file = workdir / "echo.port"
            echo = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [sys.executable, "-m", "bench.grpc_call", "--echo", str(workdir / "answer.bin"), str(port_file)]
            )
            while not (port_file.exists() and port_file.read_text()):
                if echo.poll() is not None:
                    raise RuntimeError("the echo server did not start")
                await asyncio.sleep(0.05)
            echo_port = int(port_file.read_text())
            ours: list[dict[str, float]] = []
            bare: list[dict[str, float]] = []
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                bare.append(await load(echo_port, name, token, args.requests, args.concurrency))
                ours.append(await load(services[1].port, name, token, args.requests, args.concurrency))
        finally:
            if echo is not None:
                echo.terminate()
                echo.wait(10)
            for service in reversed(services):
                service.stop()

    def sample(runs: list[dict[str, float]], key: str) -> Sample:
        return Sample.of([run[key] for run in runs])

    base = "bare grpc.aio echo (same bytes)"
    return [
        Figure("GetQrCode, qr service", "req/s", sample(ours, "rps"), base, sample(bare, "rps")),
        Figure("GetQrCode, qr service", "ms p50", sample(ours, "p50_ms"), base, sample(bare, "p50_ms"), False),
        Figure("GetQrCode, qr service", "ms p99", sample(ours, "p99_ms"), base, sample(bare, "p99_ms"), False),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--echo", nargs=2, metavar=("ANSWER_FILE", "PORT_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        serve_echo(Path(args.echo[0]), Path(args.echo[1]))
        return
    with tempfile.TemporaryDirectory(prefix="qrmesh-bench-") as tmp:
        figures = uvloop.run(measure(args, Path(tmp)))
    print(f"GetQrCode, {args.requests} calls x {args.runs} runs, concurrency {args.concurrency}, one channel")
    emit("grpc_call", figures, args={k: v for k, v in vars(args).items() if k != "echo"})


if __name__ == "__main__":
    main()
