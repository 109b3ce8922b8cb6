"""What the rate limiter adds to a call: GetQrCode on two qr processes in the same run, one charging
every call to its user's bucket in Redis (one EVALSHA; rates high enough never to refuse) and one with
user limits off (QRMESH_RATE_USER_PER_SECOND=0: the limiter asks the policy and stops there). Runs
alternate between the two so drift hits both alike. Then the charge alone, in this process: the
limiter's EVALSHA against a plain GET on the same Redis client.

    python -m bench.ratelimit [--requests 2000] [--concurrency 16] [--runs 3]

Uses DATABASE_URL / REDIS_URL when set, the embedded servers otherwise.
Prints a table and writes bench/results/ratelimit.json.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as redis
import uvloop

from bench.grpc_call import load, prepare
from bench.report import Figure, Sample, emit
from bench.servers import Service, engines, service_env
from qrmesh.platform.ratelimit import Rate, RateLimiter, SettingsRatePolicy

HIGH = {"QRMESH_RATE_USER_PER_SECOND": "1000000", "QRMESH_RATE_USER_BURST": "1000000"}
OFF = {"QRMESH_RATE_USER_PER_SECOND": "0"}


async def per_call_us(call: Callable[[], Awaitable[object]], calls: int) -> tuple[float, float]:
    """(wall, CPU) microseconds per call, one call at a time."""
    for _ in range(100):
        await call()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


async def charge_alone(redis_url: str, calls: int, runs: int) -> dict[str, list[float]]:
    """The limiter's charge (EVALSHA of the GCRA script) and a plain GET, same client, interleaved runs."""
    key = f"bench:ratelimit:{secrets.token_hex(4)}"
    rate = Rate(per_second=1_000_000, burst=1_000_000)
    found: dict[str, list[float]] = {"charge": [], "charge_cpu": [], "get": [], "get_cpu": []}
    async with redis.Redis.from_url(redis_url) as client:
        limiter = RateLimiter(
            policy=SettingsRatePolicy(user=None, api_key=None), anonymous=None, client=client, service_secret=""
        )
        try:
            for _ in range(runs):
                wall, cpu = await per_call_us(lambda: limiter.charge(key, rate), calls)
                found["charge"].append(wall)
                found["charge_cpu"].append(cpu)
                wall, cpu = await per_call_us(lambda: client.get(key), calls)
                found["get"].append(wall)
                found["get_cpu"].append(cpu)
        finally:
            await client.delete(key)
    return found


async def measure(args: argparse.Namespace, workdir: Path) -> list[Figure]:
    with engines(workdir) as (database_url, redis_url):
        alone = await charge_alone(redis_url, args.requests, args.runs)
        env = service_env(database_url, redis_url)
        services: list[Service] = []
        try:
            services.append(Service("identity", workdir, env))
            env["QRMESH_IDENTITY_ADDR"] = f"127.0.0.1:{services[0].port}"
            limited_dir, open_dir = workdir / "limited", workdir / "open"
            limited_dir.mkdir()
            open_dir.mkdir()
            services.append(Service("qr", limited_dir, env | HIGH))
            services.append(Service("qr", open_dir, env | OFF))
            limited, unlimited = services[1].port, services[2].port
            token, name, _ = await prepare(services[0].port, limited)
            readings: dict[str, list[dict[str, float]]] = {"on": [], "off": [], "on1": [], "off1": []}
            for _ in range(args.runs):
                for key, port in (("on", limited), ("off", unlimited)):
                    readings[key].append(await load(port, name, token, args.requests, args.concurrency))
                    readings[key + "1"].append(await load(port, name, token, args.requests // 4, 1))
        finally:
            for service in reversed(services):
                service.stop()

    def sample(key: str, reading: str) -> Sample:
        return Sample.of([run[reading] for run in readings[key]])

    on1, off1 = sample("on1", "p50_ms"), sample("off1", "p50_ms")
    added_us = (on1.median - off1.median) * 1000
    print(
        f"GetQrCode, {args.requests} calls x {args.runs} runs at concurrency {args.concurrency},"
        f" and {args.requests // 4} calls one at a time"
    )
    print(f"added by the limiter, one call at a time: {added_us:.0f} us at p50")
    print(
        f"the charge alone: {Sample.of(alone['charge']).median:.0f} us wall,"
        f" {Sample.of(alone['charge_cpu']).median:.0f} us CPU per call"
    )
    baseline = "same, user limits off"
    return [
        Figure(
            "limiter charge (EVALSHA), in-process",
            "us wall",
            Sample.of(alone["charge"]),
            "Redis GET, same client",
            Sample.of(alone["get"]),
            higher_is_better=False,
        ),
        Figure(
            "limiter charge (EVALSHA), in-process",
            "us CPU",
            Sample.of(alone["charge_cpu"]),
            "Redis GET, same client",
            Sample.of(alone["get_cpu"]),
            higher_is_better=False,
        ),
        Figure("GetQrCode, limiter on, 1 at a time", "ms p50", on1, baseline, off1, higher_is_better=False),
        Figure(
            "GetQrCode, limiter on, 1 at a time",
            "ms p99",
            sample("on1", "p99_ms"),
            baseline,
            sample("off1", "p99_ms"),
            higher_is_better=False,
        ),
        Figure(
            f"GetQrCode, limiter on, {args.concurrency} at a time",
            "req/s",
            sample("on", "rps"),
            baseline,
            sample("off", "rps"),
        ),
        Figure(
            f"GetQrCode, limiter on, {args.concurrency} at a time",
            "ms p50",
            sample("on", "p50_ms"),
            baseline,
            sample("off", "p50_ms"),
            higher_is_better=False,
            details={"added_us_p50_one_at_a_time": round(added_us, 1)},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qrmesh-bench-") as tmp:
        figures = uvloop.run(measure(args, Path(tmp)))
    emit("ratelimit", figures, args=vars(args))


if __name__ == "__main__":
    main()
