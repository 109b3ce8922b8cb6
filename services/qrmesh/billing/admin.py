"""`qrmesh billing grant`: put an organization on a plan without payment, for operators and self-hosters.

The command proves itself to the billing service with a service token signed
with QRMESH_SERVICE_SECRET (the mesh's shared secret) and calls the internal
`BillingAdminService.GrantPlan` at QRMESH_BILLING_ADDR (default: billing's own
port on this host, as inside its pod).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

import grpc

from qrmesh.billing import convert
from qrmesh.billing.v1 import billing_pb2, billing_service_pb2, billing_service_pb2_grpc
from qrmesh.platform.auth import SERVICE_TOKEN_HEADER, service_token
from qrmesh.platform.channels import create_channel

CALLER = "qrmesh-cli"
"""The service name the command's tokens carry (the billing log shows who granted)."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], default_port: int) -> None:
    """`qrmesh billing grant ORGANIZATION PLAN [--until TIME] [--reason TEXT]`."""
    billing = commands.add_parser("billing", help="operate plans and subscriptions")
    actions = billing.add_subparsers(dest="billing_command", required=True)
    grant = actions.add_parser(
        "grant",
        help="put an organization on a plan without payment",
        description="Put an organization on a plan without payment (needs QRMESH_SERVICE_SECRET; calls billing at "
        f"QRMESH_BILLING_ADDR, default 127.0.0.1:{default_port}).",
    )
    grant.add_argument("organization", help="organizations/{id} (or the bare id)")
    grant.add_argument("plan", help="plans/{plan} or the plan id: free, pro, business, enterprise")
    grant.add_argument("--until", help="when the grant ends and the organization returns to Free (ISO 8601)")
    grant.add_argument("--reason", default="granted by an operator", help="why, kept in the plan change ledger")
    grant.set_defaults(handler=lambda args: grant_command(args, os.environ, default_port))


def _until(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def grant_command(args: argparse.Namespace, environ: Mapping[str, str], default_port: int) -> int:
    """Run `qrmesh billing grant`; 0 on success, 1 when billing refuses, 2 when misconfigured."""
    secret = environ.get("QRMESH_SERVICE_SECRET", "").strip()
    if not secret:
        print("qrmesh billing grant: QRMESH_SERVICE_SECRET is not set (the mesh's shared secret)", file=sys.stderr)  # noqa: T201
        return 2
    try:
        until = _until(args.until)
    except ValueError:
        print(f"qrmesh billing grant: --until {args.until!r} is not an ISO 8601 time", file=sys.stderr)  # noqa: T201
        return 2
    organization = (
        args.organization if args.organization.startswith("organizations/") else f"organizations/{args.organization}"
    )
    plan = args.plan if args.plan.startswith("plans/") else f"plans/{args.plan}"
    request = billing_service_pb2.GrantPlanRequest(organization=organization, plan=plan, reason=args.reason)
    if until is not None:
        request.period_end_time.CopyFrom(convert.timestamp(until))
    address = environ.get("QRMESH_BILLING_ADDR", "").strip() or f"127.0.0.1:{default_port}"
    try:
        granted = asyncio.run(grant_plan(address, secret, request))
    except grpc.aio.AioRpcError as exc:
        print(f"qrmesh billing grant: {exc.code().name}: {exc.details()}", file=sys.stderr)  # noqa: T201
        return 1
    ends = (
        granted.current_period_end_time.ToDatetime(UTC).isoformat()
        if granted.HasField("current_period_end_time")
        else "no end"
    )
    print(f"{granted.name}: {granted.plan} ({billing_pb2.Subscription.Status.Name(granted.status)}), {ends}")  # noqa: T201
    return 0


async def grant_plan(
    address: str, secret: str, request: billing_service_pb2.GrantPlanRequest
) -> billing_pb2.Subscription:
    """Call GrantPlan at `address` with a service token signed with `secret`."""
    async with create_channel(address, default_deadline=10.0) as channel:
        stub = billing_service_pb2_grpc.BillingAdminServiceStub(channel)
        answer: billing_pb2.Subscription = await stub.GrantPlan(
            request, metadata=((SERVICE_TOKEN_HEADER, service_token(secret, CALLER)),)
        )
        return answer
