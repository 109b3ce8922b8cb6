"""One shape for every benchmark's results: figures beside their baselines, printed and written as JSON.

A figure is one number of ours and the baseline measured in the same run on the same machine
(a bare library, a bare server), with how noisy the runs were. `emit` prints a part's table and
writes `bench/results/<part>.json`; `python -m bench` gathers every part into one table.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")


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


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: Sequence[Figure], *, part: str = "") -> str:
    """A fixed-width table of figures (one line each)."""
    head = f"{'part':14}" if part else ""
    lines = [f"{head}{'figure':40}{'ours':>12}{'±':>6} {'baseline':28}{'base':>12}{'±':>6}{'ratio':>8}  unit / target"]
    for figure in figures:
        target = f"  [{figure.target}: {'met' if figure.met else 'NOT met'}]" if figure.target else ""
        lines.append(
            (f"{part:14}" if part else "")
            + f"{figure.name[:39]:40}{_number(figure.ours.median):>12}{figure.ours.spread:>6.0%} "
            f"{figure.baseline_name[:27]:28}{_number(figure.baseline.median):>12}{figure.baseline.spread:>6.0%}"
            f"{figure.ratio:>7.2f}x  {figure.unit}{target}"
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
