"""Engines and service processes for benchmarks: PostgreSQL and Redis from the environment or embedded,
and `qrmesh serve` processes as they run in production."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from qrmesh.stack import start_postgres, start_valkey


def _admin(url: str, statement: str) -> None:
    """Run one statement on the server of `url` (from any thread, inside a running event loop or not)."""

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server of `server_url`, dropped afterwards: every run starts
    from the migrations, whatever earlier runs or other programs left in the server's databases."""
    name = f"qrmesh_bench_{secrets.token_hex(4)}"
    url = make_url(server_url)
    _admin(url.render_as_string(hide_password=False), f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        _admin(url.render_as_string(hide_password=False), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def engines(workdir: Path, *, own_redis: bool = False) -> Iterator[tuple[str, str]]:
    """(database URL, Redis URL): a new database on DATABASE_URL's server (dropped afterwards) and REDIS_URL
    when set, embedded servers otherwise.

    `own_redis` always starts an embedded Valkey, for runs that write more than a shared Redis should keep.
    """
    stoppers = []
    with contextlib.ExitStack() as stack:
        try:
            database_url = os.environ.get("DATABASE_URL", "").strip()
            if database_url:
                database_url = stack.enter_context(fresh_database(database_url))
            else:
                database_url, stop = start_postgres(workdir)
                stoppers.append(stop)
            redis_url = "" if own_redis else os.environ.get("REDIS_URL", "").strip()
            if not redis_url:
                redis_url, stop = start_valkey(workdir)
                stoppers.append(stop)
            yield database_url, redis_url
        finally:
            for stop in reversed(stoppers):
                stop()


class Service:
    """One `qrmesh serve NAME` process on a free port."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.port_file = workdir / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qrmesh.cli", "serve", name, "--port", "0", "--port-file", str(self.port_file)],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not (self.port_file.exists() and self.port_file.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"qrmesh serve {name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def service_env(database_url: str, redis_url: str) -> dict[str, str]:
    """What every service process of a benchmark gets."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "QRMESH_SERVICE_SECRET": secrets.token_urlsafe(32),
        "QRMESH_LOG_LEVEL": "warning",
        "QRMESH_METRICS_PORT": "0",
        "QRMESH_SHUTDOWN_GRACE": "1",
    }
