"""Scans through the edge: wrk against `/r/{code}` of the whole local stack
(Envoy -> redirect, every scan recorded in the `scans` stream), beside an nginx
`return 302`, a bare uvicorn 302, and the same Envoy configuration in front of
that nginx (the edge's own ceiling on this machine), all started by this
script and measured in this run on the same machine.

    python -m bench.redirect [--seconds 10] [--connections 64] [--runs 3]

Needs wrk and nginx (Debian packages `wrk`, `nginx-light`) and uvicorn (dev
extra). Uses DATABASE_URL when set (the embedded PostgreSQL otherwise) and
always an embedded Valkey, so its scans never land in your own stream.
Prints a table and writes bench/results/redirect.json (see bench/report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.report import MISSING_TOOL, Figure, Sample, emit
from qrmesh.stack import Stack

UVICORN_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 302,
                "headers": [(b"location", b"https://example.com/"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
    uwsgi_temp_path {dir}; scgi_temp_path {dir};
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200; }}
        location / {{ return 302 https://example.com/; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    """Run wrk once; requests/s, p50 and p99 in milliseconds, requests and non-3xx answers."""
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))

    def ms(text: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
        return float(number) * _UNITS[unit]

    return {
        "rps": rps,
        "p50_ms": ms(latency["50"]),
        "p99_ms": ms(latency["99"]),
        "requests": total,
        "errors": int(bad.group(1)) if bad else 0,
    }


@contextlib.contextmanager
def nginx(workdir: Path) -> Iterator[str]:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port))
    process = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(workdir)])
    try:
        wait_listening(port)
        yield f"http://127.0.0.1:{port}/r/x"
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def envoy_to_nginx(workdir: Path) -> Iterator[str]:
    """The production edge configuration with nginx in the redirect's place."""
    from qrmesh.edge import EnvoyProcess, Upstream, render_config

    with nginx(workdir) as nginx_url:
        port = int(nginx_url.split(":")[2].split("/")[0])
        upstream = Upstream(name="redirect", host="127.0.0.1", port=port, grpc_services=[], http_port=port)
        envoy = EnvoyProcess(render_config([upstream], listen_port=0), workdir)
        try:
            yield f"http://127.0.0.1:{envoy.wait_ready()}/r/x"
        finally:
            envoy.stop()


@contextlib.contextmanager
def uvicorn(workdir: Path) -> Iterator[str]:
    port = free_port()
    (workdir / "bare302.py").write_text(UVICORN_APP)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare302:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ],
        cwd=workdir,
    )
    try:
        wait_listening(port)
        yield f"http://127.0.0.1:{port}/r/x"
    finally:
        process.terminate()
        process.wait(10)


def create_code(edge: str) -> str:
    """Sign up, create an organization and a dynamic code; its short code."""
    email = f"bench-{os.getpid()}-{time.time_ns()}@example.com"
    password = "a-long-and-unusual-passphrase-7"  # noqa: S105 - a throwaway account
    with httpx.Client(base_url=edge, timeout=10) as http:
        http.post("/v1/auth:signUp", json={"email": email, "password": password}).raise_for_status()
        token = http.post("/v1/auth:login", json={"email": email, "password": password}).json()["accessToken"]
        headers = {"authorization": f"Bearer {token}"}
        org = http.post("/v1/organizations", json={"displayName": "bench"}, headers=headers).json()["name"]
        body = {"displayName": "bench", "kind": "DYNAMIC", "content": {"url": {"url": "https://example.com/"}}}
        code = http.post(f"/v1/{org}/qrCodes", json=body, headers=headers)
        code.raise_for_status()
        short: str = code.json()["shortCode"]
        return short


def stream_length(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen("scans"))
    finally:
        client.close()


def median_of(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    summary: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
    rps = [run["rps"] for run in runs]
    summary["rps_min"], summary["rps_max"] = min(rps), max(rps)
    summary["runs"] = runs
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    missing = [
        tool for tool in ("wrk", "nginx") if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if importlib.util.find_spec("uvicorn") is None:
        missing.append("uvicorn")
    if missing:
        print(
            f"redirect: not measured, {' and '.join(missing)} not installed. wrk and nginx are Debian/Ubuntu packages"
            " (sudo apt-get install wrk nginx-light; Homebrew: brew install wrk nginx); uvicorn comes with the dev"
            " extra (make install).",
            file=sys.stderr,
        )
        return MISSING_TOOL

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="qrmesh-bench-") as tmp:
        workdir = Path(tmp)
        baselines = (
            ("nginx return 302", "nginx", nginx),
            ("uvicorn bare 302", "uvicorn", uvicorn),
            ("Envoy (same config) -> nginx 302", "envoy", envoy_to_nginx),
        )
        for name, folder, server in baselines:
            (workdir / folder).mkdir()
            with server(workdir / folder) as url:
                wrk(url, 2, args.connections)  # warm up
                results[name] = median_of([wrk(url, args.seconds, args.connections) for _ in range(args.runs)])

        edge_port = free_port()
        os.environ.setdefault("QRMESH_LOG_LEVEL", "warning")
        # A Valkey of its own: the run adds hundreds of thousands of scans to the stream.
        os.environ.pop("REDIS_URL", None)
        stack = Stack(workdir / "stack", edge_port)
        try:
            stack.start()
            edge = f"http://127.0.0.1:{edge_port}"
            short = create_code(edge)
            url = f"{edge}/r/{short}"
            redis_url = stack.redis_url
            wrk(url, 2, args.connections)  # warm up: caches, connections
            time.sleep(1.0)
            runs = []
            for _ in range(args.runs):
                before = stream_length(redis_url)
                run = wrk(url, args.seconds, args.connections)
                time.sleep(1.5)  # the recorder flushes every 50 ms; give it ample time
                run["events_stored"] = stream_length(redis_url) - before
                runs.append(run)
            results["qrmesh scan via Envoy (recorded)"] = median_of(runs)
        finally:
            stack.stop()

    ours = results["qrmesh scan via Envoy (recorded)"]
    nginx_row = results["nginx return 302"]

    def sample(row: dict[str, Any], key: str) -> Sample:
        return Sample.of([run[key] for run in row["runs"]])

    name = "scan via Envoy, recorded"
    share = ours["rps"] / nginx_row["rps"]
    figures = [
        Figure(
            name,
            "req/s",
            sample(ours, "rps"),
            "nginx return 302",
            sample(nginx_row, "rps"),
            target="ratio >= 0.25",
            met=share >= 0.25,
        ),
        Figure(name, "req/s", sample(ours, "rps"), "uvicorn bare 302", sample(results["uvicorn bare 302"], "rps")),
        Figure(
            name,
            "req/s",
            sample(ours, "rps"),
            "Envoy (same config) -> nginx",
            sample(results["Envoy (same config) -> nginx 302"], "rps"),
        ),
        Figure(name, "ms p50", sample(ours, "p50_ms"), "nginx return 302", sample(nginx_row, "p50_ms"), False),
        Figure(
            name,
            "ms p99",
            sample(ours, "p99_ms"),
            "nginx return 302",
            sample(nginx_row, "p99_ms"),
            False,
            target="p99 <= 15 ms",
            met=ours["p99_ms"] <= 15.0,
        ),
        Figure(
            "events stored in the stream",
            "events",
            sample(ours, "events_stored"),
            "requests answered (wrk)",
            sample(ours, "requests"),
            details={"note": "runs stop with up to one request per connection still in flight"},
        ),
    ]
    print(f"wrk -t2 -c{args.connections}, {args.runs} runs of {args.seconds} s each, medians")
    emit("redirect", figures, args=vars(args), extra={"servers": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
