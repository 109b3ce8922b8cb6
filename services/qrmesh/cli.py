"""The `qrmesh` command: serve one service, run the local stack, render the edge config, grant plans, bulk."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from qrmesh.mesh import SERVICES
from qrmesh.platform.settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from qrmesh.platform.logs import configure_logging
    from qrmesh.platform.server import Server, serve

    entry = SERVICES[args.service]
    try:
        settings = Settings.from_env(entry.name, port=entry.default_port)
    except SettingsError as exc:
        print(f"qrmesh serve {entry.name}: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    if args.port is not None:
        settings = dataclasses.replace(settings, port=args.port)
    configure_logging(entry.name, settings.log_level, settings.log_format)

    async def ready(server: Server) -> None:
        if args.port_file:
            # Extra ports first ("<file>.http"), so whoever waits for the main file finds them too.
            for name, port in server.resources.ports.items():
                await asyncio.to_thread(Path(f"{args.port_file}.{name}").write_text, str(port))
            await asyncio.to_thread(Path(args.port_file).write_text, str(server.port))

    try:
        uvloop.run(serve(settings, entry.load().SPEC, on_ready=ready))
    except SettingsError as exc:
        print(f"qrmesh serve {entry.name}: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return 0


def _run(args: argparse.Namespace) -> int:
    from qrmesh.stack import run

    return run(Path(args.data_dir), args.edge_port)


def _envoy_config(args: argparse.Namespace) -> int:
    from qrmesh.edge import Upstream, render_config, static_files

    if args.kubernetes:
        upstreams = [
            Upstream(
                name=name,
                host=f"{args.release}-{name}",
                port=entry.default_port,
                grpc_services=entry.grpc_services(),
                dns=True,
                http_port=entry.http_port,
            )
            for name, entry in SERVICES.items()
        ]
        config = render_config(
            upstreams,
            listen_host="0.0.0.0",  # noqa: S104 - the edge pod listens on every interface
            listen_port=8080,
            admin_port=9901,
            descriptor_path="/etc/envoy/qrmesh.binpb",
            health_check_interval="5s",
            static=static_files(Path("/etc/envoy/static")),
        )
    else:
        upstreams = [
            Upstream(
                name=name,
                host="127.0.0.1",
                port=entry.default_port,
                grpc_services=entry.grpc_services(),
                http_port=entry.http_port,
            )
            for name, entry in SERVICES.items()
        ]
        config = render_config(upstreams, listen_port=args.edge_port)
    if args.out:
        Path(args.out).write_text(config)
    else:
        sys.stdout.write(config)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from qrmesh.platform.database import create_engine, migrate

    entry = SERVICES[args.service]
    spec = entry.load().SPEC
    if spec.migrations is None:
        return 0
    try:
        settings = Settings.from_env(entry.name)
    except SettingsError as exc:
        print(f"qrmesh migrate {entry.name}: {exc}", file=sys.stderr)  # noqa: T201
        return 2

    async def main() -> None:
        engine = create_engine(settings.database_url, schema=spec.name, pool_size=1)
        try:
            await migrate(engine, spec.migrations, spec.name)
        finally:
            await engine.dispose()

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qrmesh", description="qrmesh: an open QR-code platform.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service (as in Kubernetes)")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("--port", type=int, default=None, help="gRPC port (default: the service's own; 0 = any)")
    serve.add_argument("--port-file", help="write the bound port here once serving")
    serve.set_defaults(handler=_serve)

    run = commands.add_parser("run", help="start the whole platform locally")
    run.add_argument("--data-dir", default=".qrmesh", help="where local data and logs live")
    run.add_argument("--edge-port", type=int, default=int(os.environ.get("QRMESH_EDGE_PORT", "8080")))
    run.set_defaults(handler=_run)

    envoy = commands.add_parser("envoy-config", help="render the edge's Envoy configuration")
    envoy.add_argument("--kubernetes", action="store_true", help="render for the Helm chart")
    envoy.add_argument("--release", default="qrmesh", help="Helm release name (Kubernetes Service prefix)")
    envoy.add_argument("--edge-port", type=int, default=8080)
    envoy.add_argument("--out", help="write here instead of stdout")
    envoy.set_defaults(handler=_envoy_config)

    migrate = commands.add_parser("migrate", help="apply a service's database migrations")
    migrate.add_argument("service", choices=sorted(SERVICES))
    migrate.set_defaults(handler=_migrate)

    from qrmesh.billing.admin import add_commands as add_billing_commands

    add_billing_commands(commands, SERVICES["billing"].default_port)

    from qrmesh.bulk_cli import add_command as add_bulk_command

    add_bulk_command(commands)

    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
