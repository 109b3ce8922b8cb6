"""Every benchmark, one after another, each in a process of its own; one table at the end.

    python -m bench [--only render,redirect] [--markdown BENCHMARKS.md]

Each part prints its own table and writes bench/results/<part>.json (bench/report.py); this runs
them in order, prints every figure with its baseline and ratio, writes bench/results/summary.json
and, with --markdown, the Markdown report (BENCHMARKS.md in the repository is the latest one).
Parts whose tools are missing (wrk, nginx) fail loudly rather than being left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import MISSING_TOOL, RESULTS, Figure, load, machine, markdown, table


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    module: str
    args: tuple[str, ...]
    what: str


SCANS = int(os.environ.get("QRMESH_BENCH_SCANS", "2000000"))
"""Synthetic scans the analytics query part loads (once; kept in the database qrmesh_bench)."""

PARTS = [
    Part("render", "bench.render", ("--seconds", "1", "--runs", "5"), "rendering in-process, one core"),
    Part(
        "render_rpc",
        "bench.render_rpc",
        ("--requests", "2000", "--runs", "3"),
        "RenderQrCode over gRPC (qr service in-process)",
    ),
    Part("grpc_call", "bench.grpc_call", ("--requests", "3000", "--runs", "3"), "GetQrCode, full chain"),
    Part("redirect", "bench.redirect", ("--seconds", "8", "--runs", "3"), "scans through Envoy, wrk -c64"),
    Part("ratelimit", "bench.ratelimit", ("--requests", "2000", "--runs", "3"), "the rate limiter's cost per call"),
    Part(
        "analytics_ingest",
        "bench.analytics_ingest",
        ("--events", "50000", "--runs", "3"),
        "scan ingestion, one consumer process",
    ),
    Part(
        "analytics_query",
        "bench.analytics_query",
        ("--scans", str(SCANS), "--runs", "20", "--baseline-runs", "3"),
        f"analytics queries over a year of {SCANS:,} scans"
        + (
            ""
            if SCANS >= 10_000_000
            else " (fewer than the 10M the issue asks for, so that make bench fits in 15 minutes on two cores;"
            " QRMESH_BENCH_SCANS=10000000 make bench loads 10M once, about 10 minutes on two busy cores, keeps them)"
        ),
    ),
    Part(
        "bulk",
        "bench.bulk",
        ("--rows", "10000", "--runs", "2", "--vcard"),
        "bulk generation: 10,000 CSV rows to a ZIP of PNGs through the qr service",
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated parts: " + ", ".join(p.name for p in PARTS))
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    chosen = [p for p in PARTS if not args.only or p.name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {p.name for p in PARTS}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")

    began = time.monotonic()
    done: list[tuple[Part, dict[str, object], list[Figure], float]] = []
    failed: list[str] = []
    for part in chosen:
        print(f"\n=== {part.name}: {part.what}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", part.module, *part.args])
        seconds = time.monotonic() - started
        print(f"=== {part.name}: {seconds:.0f} s (exit {code})", flush=True)
        if code == MISSING_TOOL:
            failed.append(f"{part.name}: a tool it needs is missing (see its message above)")
            continue
        if code != 0:
            failed.append(f"{part.name} (exit {code})")
            continue
        document, figures = load(part.name)
        done.append((part, document, figures, seconds))

    print(f"\n=== every figure ({time.monotonic() - began:.0f} s in all)")
    for index, (part, _, figures, _) in enumerate(done):
        rendered = table(figures, part=part.name)
        print(rendered if index == 0 else rendered.split("\n", 1)[1])
    summary = {
        "machine": machine(),
        "seconds": time.monotonic() - began,
        "parts": {part.name: [f.as_json() for f in figures] for part, _, figures, _ in done},
        "failed": failed,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.markdown:
        command = "make bench" if not args.only else f"python -m bench --only {args.only}"
        args.markdown.write_text(markdown(done, command, failed=failed, seconds=time.monotonic() - began))
        print(f"written to {args.markdown}")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
