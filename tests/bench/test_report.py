"""The report: ratios to the confirmed baseline, targets, py-spy summaries, /proc readings."""

from __future__ import annotations

import math
import os
from pathlib import Path

from bench import procstat, report
from bench.profile import area, parse, summarize
from bench.scenarios import Row, calibrated_name


def _row(system: str, rate: float, latency: float = 50, scenario: str = "throughput", rss: float = 60) -> Row:
    return Row(
        scenario=scenario, system=system, vendor_latency_ms=latency, commands=1000, rate=rate,
        rate_end_to_end=rate, publish_rate=10_000, p50_ms=55, p99_ms=80, cpu_seconds_per_1k=0.3,
        peak_rss_mb=rss, vendor_calls=1000, vendor_repeats=0, statuses={"succeeded": 1000},
    )  # fmt: skip


def test_ratio_is_against_the_confirmed_baseline_at_the_same_latency() -> None:
    """The worker's ratio divides by the confirmed baseline of its latency, never the unconfirmed one."""
    rows = [_row("baseline", 2000), _row("baseline, no confirms", 4000), _row("worker [sqlite]", 1500)]
    assert report.ratio_of(rows[2], rows) == 0.75
    assert math.isnan(report.ratio_of(_row("worker [sqlite]", 1500, latency=0), rows))


def test_a_calibration_baseline_is_measured_against_the_bare_one_and_is_no_target() -> None:
    """``--calibrate`` rows get their ratio to the bare baseline; the issue's targets are the worker's only."""
    rows = [_row("baseline", 2000), _row(calibrated_name(100), 1700), _row("worker [sqlite]", 1500)]
    assert report.ratio_of(rows[1], rows) == 0.85
    assert {check["system"] for check in report.targets(rows)} == {"worker [sqlite]"}


def test_targets_say_met_missed_or_not_measured() -> None:
    """Each issue target is checked against the rows that measure it."""
    rows = [
        _row("baseline", 2000),
        _row("worker [sqlite]", 1200),
        _row("worker [sqlite]", 6000, latency=0, scenario="replays"),
        _row("worker [sqlite]", 900, latency=0, scenario="backlog drain", rss=250),
    ]
    verdicts = {item["target"]: item["met"] for item in report.targets(rows)}
    assert verdicts == {
        "worker_50ms_rate": False,
        "worker_50ms_ratio": False,
        "sqlite_50ms_ratio": False,
        "replays_rate": True,
        "backlog_peak_rss_mb": False,
    }


def test_tracing_cost_is_against_the_same_store_untraced_in_the_same_run() -> None:
    """1 in 10 sampled may cost 8 %, all sampled 30 %, of the same store's rate with tracing off."""
    rows = [
        _row("baseline", 2000),
        _row("worker [sqlite]", 1000),
        _row("worker [sqlite+tracing@0.1]", 950),
        _row("worker [sqlite+tracing]", 600),
        _row("worker [postgres]", 1700),
    ]
    checks = {(item["target"], item["system"]): item for item in report.targets(rows)}
    one_in_ten = checks[("tracing_sampled_0.1_cost", "worker [sqlite+tracing@0.1]")]
    assert one_in_ten["met"] is True and abs(one_in_ten["value"] - 0.05) < 1e-9
    every = checks[("tracing_sampled_all_cost", "worker [sqlite+tracing]")]
    assert every["met"] is False and abs(every["value"] - 0.4) < 1e-9
    assert checks[("postgres_50ms_ratio", "worker [postgres]")]["met"] is True


def test_table_has_a_line_per_row_and_dashes_for_missing_numbers() -> None:
    """The Markdown table shows every row; NaN prints as a dash, not 'nan'."""
    rows = [_row("baseline", 2000), _row("worker [sqlite]", math.nan)]
    text = report.table(rows)
    assert len(text.splitlines()) == 2 + len(rows)
    assert "nan" not in text.lower()


def test_profile_summary_ranks_self_time_by_package(tmp_path: Path) -> None:
    """Collapsed stacks are summed by innermost frame and by package, line numbers dropped."""
    stacks = tmp_path / "profile.txt"
    stacks.write_text(
        "run (worker/runtime.py:10);loads (/v/lib/python3.11/site-packages/orjson/x.py:1) 30\n"
        "run (worker/runtime.py:12);select (/usr/lib/python3.11/selectors.py:5) 10\n"
    )
    assert parse(stacks.read_text())[0] == (
        ["run (worker/runtime.py)", "loads (/v/lib/python3.11/site-packages/orjson/x.py)"],
        30,
    )
    assert area("select (/usr/lib/python3.11/selectors.py)") == "stdlib:selectors"
    assert area("_request (aiohttp/client.py)") == "aiohttp"
    assert area("claim (worker/store/sqlite.py)") == "worker"
    summary = summarize(stacks)
    assert "| 75.0% | 30 | `orjson` |" in summary
    assert "| 100.0% | 40 | `run (worker/runtime.py)` |" in summary  # inclusive, project frames only
    assert "| 75.0% | 30 | `loads (/v/lib/python3.11/site-packages/orjson/x.py)` |" in summary  # self


def test_procstat_reads_this_process() -> None:
    """/proc gives this process some CPU time and a peak RSS at least its current RSS."""
    usage = procstat.usage(os.getpid())
    assert usage.cpu_seconds > 0
    assert usage.peak_rss_bytes >= usage.rss_bytes > 0


def test_medians_keep_the_middle_run_whole() -> None:
    """Repeated runs collapse to the one with the median rate, and the note lists every rate."""
    rows = [
        _row("baseline", 3000),
        _row("worker [sqlite]", 900),
        _row("baseline", 1000),
        _row("baseline", 2000),
    ]
    merged = report.medians(rows)
    assert [(row.system, row.rate) for row in merged] == [("baseline", 2000), ("worker [sqlite]", 900)]
    assert merged[0].notes == ["median of 3 runs by cmd/s: 3,000, 1,000, 2,000"]
    assert rows[3].notes == []
