"""The table on stdout and the JSON file; ratios to the baseline and the issue's targets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from bench import stats
from bench.scenarios import Row

TARGETS = {
    "worker_50ms_rate": 1500.0,
    "worker_50ms_ratio": 0.7,
    "worker_0ms_ratio": 0.6,
    "replays_rate": 5000.0,
    "backlog_peak_rss_mb": 200.0,
    # issue 16, at 50 ms against the leanest baseline (bench/baseline.py)
    "sqlite_50ms_ratio": 0.85,
    "postgres_50ms_ratio": 0.8,
    "tracing_sampled_0.1_cost": 0.08,  # at most this far below the same store with tracing off
    "tracing_sampled_all_cost": 0.30,
}
STORE_RATIO_TARGETS = {"worker [sqlite]": "sqlite_50ms_ratio", "worker [postgres]": "postgres_50ms_ratio"}


def ceiling(rows: Sequence[Row], latency_ms: float) -> float:
    """The confirmed baseline's steady rate at this vendor latency (NaN when it was not run)."""
    for row in rows:
        if row.system == "baseline" and row.scenario == "throughput" and row.vendor_latency_ms == latency_ms:
            return row.rate
    return math.nan


def ratio_of(row: Row, rows: Sequence[Row]) -> float:
    if row.scenario != "throughput" or row.system == "baseline":
        return math.nan
    return stats.ratio(row.rate, ceiling(rows, row.vendor_latency_ms))


def medians(rows: Sequence[Row]) -> list[Row]:
    """One row per (scenario, system, latency): the run with the median rate, its siblings' rates in a note.

    Whole rows, not per-column medians, so each row's numbers come from one run.
    """
    groups: dict[tuple[str, str, float], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.scenario, row.system, row.vendor_latency_ms), []).append(row)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        ordered = sorted(group, key=lambda row: -math.inf if math.isnan(row.rate) else row.rate)
        middle = dataclasses.replace(ordered[(len(ordered) - 1) // 2])
        rates = ", ".join(_number(row.rate) for row in group)
        middle.notes = [*middle.notes, f"median of {len(group)} runs by cmd/s: {rates}"]
        merged.append(middle)
    return merged


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    """A Markdown table, one line per row, ready to paste into the README."""
    header = (
        "| scenario | system | vendor ms | commands | cmd/s | cmd/s end-to-end | x baseline "
        "| p50 ms | p99 ms | CPU s / 1k | peak RSS MB | vendor calls "
        "| machine CPU s / 1k | broker CPU s / 1k | PostgreSQL CPU s / 1k |"
    )
    lines = [header, "|" + "---|" * 2 + "---:|" * 13]
    for row in rows:
        calls = "-" if row.vendor_calls is None else f"{row.vendor_calls:,}"
        if row.vendor_repeats:
            calls += f" ({row.vendor_repeats:,} repeated)"
        cells = [
            row.scenario, row.system, f"{row.vendor_latency_ms:g}", f"{row.commands:,}", _number(row.rate),
            _number(row.rate_end_to_end), _number(ratio_of(row, rows), 2), _number(row.p50_ms, 1),
            _number(row.p99_ms, 1), _number(row.cpu_seconds_per_1k, 2), _number(row.peak_rss_mb), calls,
            _number(row.machine_cpu_seconds_per_1k, 2), _number(row.broker_cpu_seconds_per_1k, 2),
            _number(row.database_cpu_seconds_per_1k, 2),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: Sequence[Row]) -> list[str]:
    return [
        f"{row.scenario} / {row.system} / {row.vendor_latency_ms:g} ms: {note}"
        for row in rows
        for note in row.notes
    ]


def targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each target of the issue against each worker row it applies to; ``met`` is None when not measured."""
    checks: list[dict[str, Any]] = []

    def check(name: str, row: Row, value: float, met: bool) -> None:
        checks.append({"target": name, "system": row.system, "value": None if math.isnan(value) else value,
                       "goal": TARGETS[name], "met": None if math.isnan(value) else met})  # fmt: skip

    for row in rows:
        if not row.system.startswith("worker"):
            continue
        if row.scenario == "throughput" and row.vendor_latency_ms == 50:
            check("worker_50ms_rate", row, row.rate, row.rate >= TARGETS["worker_50ms_rate"])
            ratio = ratio_of(row, rows)
            check("worker_50ms_ratio", row, ratio, ratio >= TARGETS["worker_50ms_ratio"])
            if name := STORE_RATIO_TARGETS.get(row.system):
                check(name, row, ratio, ratio >= TARGETS[name])
            if cost_target := _tracing_target(row.system):
                cost = tracing_cost(row, rows)
                check(cost_target, row, cost, cost <= TARGETS[cost_target])
        elif row.scenario == "throughput" and row.vendor_latency_ms == 0:
            ratio = ratio_of(row, rows)
            check("worker_0ms_ratio", row, ratio, ratio >= TARGETS["worker_0ms_ratio"])
        elif row.scenario == "replays":
            check("replays_rate", row, row.rate, row.rate >= TARGETS["replays_rate"])
        elif row.scenario == "backlog drain":
            check(
                "backlog_peak_rss_mb", row, row.peak_rss_mb, row.peak_rss_mb < TARGETS["backlog_peak_rss_mb"]
            )
    return checks


def _tracing_target(system: str) -> str | None:
    """``worker [sqlite+tracing]`` -> the all-sampled target, ``...+tracing@0.1]`` -> the one-in-ten one."""
    if "+tracing@0.1]" in system:
        return "tracing_sampled_0.1_cost"
    if system.endswith("+tracing]"):
        return "tracing_sampled_all_cost"
    return None


def tracing_cost(row: Row, rows: Sequence[Row]) -> float:
    """How far below the same store with tracing off (same latency, same run) a traced row's rate is."""
    untraced = row.system.split("+", 1)[0] + "]"
    for other in rows:
        if (other.system, other.scenario, other.vendor_latency_ms) == (
            untraced,
            row.scenario,
            row.vendor_latency_ms,
        ) and other.rate > 0:
            return 1 - row.rate / other.rate
    return math.nan


def target_lines(checks: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for item in checks:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[item["met"]]
        value = "-" if item["value"] is None else f"{item['value']:,.2f}"
        lines.append(f"{item['target']} [{item['system']}]: {value} (goal {item['goal']:,g}) {verdict}")
    return lines
