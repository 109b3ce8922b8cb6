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
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import RESULTS, Figure, load, machine, table


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    module: str
    args: tuple[str, ...]
    what: str


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
        ("--events", "100000", "--runs", "3"),
        "scan ingestion, one consumer process",
    ),
    Part(
        "analytics_query",
        "bench.analytics_query",
        ("--scans", "1000000", "--runs", "20"),
        "analytics queries over a year (1M scans here; the 10M run: python -m bench.analytics_query)",
    ),
]


def markdown(parts: list[tuple[Part, dict[str, object], list[Figure], float]], command: str) -> str:
    """The report: machine, how to reproduce, every part's figures."""
    host = machine()
    lines = [
        "# Benchmarks",
        "",
        "Every figure is ours beside a baseline measured in the same run on the same machine, with the",
        "ratio ours / baseline (for rates above 1 is faster than the baseline; for times above 1 is slower).",
        "Numbers are medians of several runs; `±` is the spread of those runs, (max - min) / median.",
        "Written by `make bench`; each part also runs alone (`python -m bench.<part> --help`).",
        "",
        f"- measured: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {host['cpu']}, {host['cpus']} CPUs, {host['memory_gib']} GiB, {host['os']},"
        f" Python {host['python']}",
        f"- command: `{command}`",
        "- every load generator, server and database shares the same CPUs: absolute numbers are this",
        "  machine's; ratios are what carries over.",
        "",
    ]
    for part, _, figures, seconds in parts:
        lines += [f"## {part.name}: {part.what}", ""]
        lines.append(f"`python -m {part.module} {' '.join(part.args)}` ({seconds:.0f} s)")
        lines += ["", "| figure | unit | ours | ± | baseline | baseline | ± | ratio | target |"]
        lines.append("|---|---|---:|---:|---|---:|---:|---:|---|")
        for f in figures:
            target = f"{f.target}: {'met' if f.met else '**not met**'}" if f.target else ""
            lines.append(
                f"| {f.name} | {f.unit} | {f.ours.median:,.2f} | {f.ours.spread:.0%} | {f.baseline_name} |"
                f" {f.baseline.median:,.2f} | {f.baseline.spread:.0%} | {f.ratio:.2f}x | {target} |"
            )
        lines.append("")
    return "\n".join(lines)


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
        args.markdown.write_text(markdown(done, command))
        print(f"written to {args.markdown}")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
