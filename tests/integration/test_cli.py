"""`qrmesh serve` as Kubernetes runs it: its own process, SIGTERM for a graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qrmesh.platform.settings import Settings


def test_serve_runs_until_sigterm(settings: Settings, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QRMESH_METRICS_PORT": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "qrmesh.cli", "serve", "qr", "--port", "0", "--port-file", str(port_file)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "qrmesh serve did not start"
            time.sleep(0.05)
        port = int(port_file.read_text())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = process.stderr.read() if process.stderr else ""
    assert '"message": "serving"' in logs
    assert '"message": "stopped"' in logs


def test_missing_setting_is_named_at_start() -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    result = subprocess.run(
        [sys.executable, "-m", "qrmesh.cli", "serve", "qr"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr
