"""One measured run: a collector, optionally a publisher, and /proc samples of the process under test."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import procstat, stats
from bench.amqp import Collected, CollectJob, PublishJob, collect_process, publish_process

_CTX = multiprocessing.get_context("spawn")
NEIGHBOURS = frozenset({"beam.smp", "postgres"})
"""The broker's and PostgreSQL's processes: what a consumer makes them do costs the same cores."""
_START = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Measured:
    """What one run saw, before it is turned into a table row."""

    collected: Collected
    expected: int
    first_publish: float | None = None
    last_publish: float | None = None
    cpu_seconds: float = math.nan
    peak_rss_bytes: int = 0
    machine_cpu_seconds: float = math.nan
    """Busy CPU of every core over the run: the process under test and all beside it."""
    neighbour_cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU of the servers beside it over the run, by command name (:data:`NEIGHBOURS`)."""
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return self.expected - self.collected.count

    def publish_rate(self) -> float:
        if self.first_publish is None or self.last_publish is None:
            return math.nan
        return stats.rate(self.expected, self.first_publish, self.last_publish)

    def end_to_end_rate(self) -> float:
        """Events over first publish (or, for a backlog, first event) -> last event."""
        receipts = self.collected.receipts
        if not receipts:
            return math.nan
        start = self.first_publish if self.first_publish is not None else min(receipts)
        return stats.rate(len(receipts), start, max(receipts))

    def steady_rate(self) -> float:
        return stats.steady_rate(self.collected.receipts)

    def latency_ms(self, q: float) -> float:
        values = [value for value in self.collected.latencies if not math.isnan(value)]
        return stats.percentile(values, q) * 1000


@dataclass(frozen=True)
class Plan:
    """What to measure. ``launch`` starts the process under test after the collector listens
    (a backlog's worker) and returns its pid; otherwise ``pid`` is already running."""

    label: str
    url: str
    prefix: str
    expected: int
    publish: PublishJob | None = None
    pid: int | None = None
    launch: Callable[[], int] | None = None
    stall_seconds: float = 30.0
    max_seconds: float = 600.0


class _Watch:
    """Memory samples and progress lines while a run goes on."""

    def __init__(self, plan: Plan, pid: int | None) -> None:
        self.plan, self.pid = plan, pid
        self.peak_rss = 0
        self.last_count, self.last_change = 0, time.monotonic()
        self.next_report = time.monotonic() + 1.0

    def sample(self, seen: int, sent: int | None) -> None:
        now = time.monotonic()
        if self.pid is not None:
            with contextlib.suppress(OSError):
                self.peak_rss = max(self.peak_rss, procstat.usage(self.pid).peak_rss_bytes)
        if seen != self.last_count:
            self.last_count, self.last_change = seen, now
        if now >= self.next_report:
            self.next_report = now + 1.0
            published = "" if sent is None else f"published {sent}/{self.plan.expected}  "
            memory = f"  rss peak {self.peak_rss / 2**20:.0f} MB" if self.pid is not None else ""
            say(f"{self.plan.label}: {published}events {seen}/{self.plan.expected}{memory}")

    def stalled(self) -> bool:
        return time.monotonic() - self.last_change > self.plan.stall_seconds


def run(plan: Plan) -> Measured:
    """Collect until every expected event arrived, the run stalls, or its deadline passes."""
    results: Any = _CTX.Queue()
    ready, stop = _CTX.Event(), _CTX.Event()
    seen, sent = _CTX.Value("q", 0), _CTX.Value("q", 0)
    job = CollectJob(plan.url, plan.prefix, plan.expected, max_seconds=plan.max_seconds + 30)
    collector = _CTX.Process(target=collect_process, args=(job, ready, stop, seen, results), daemon=True)
    collector.start()
    if not ready.wait(30):
        collector.terminate()
        raise RuntimeError("the event collector did not start within 30 s")
    pid = plan.launch() if plan.launch is not None else plan.pid
    cpu_before = procstat.usage(pid).cpu_seconds if pid is not None else math.nan
    machine_before = procstat.machine_busy_seconds()
    neighbours_before = procstat.cpu_by_name(NEIGHBOURS)
    publisher, published = None, None
    if plan.publish is not None:
        published = _CTX.Queue()
        publisher = _CTX.Process(target=publish_process, args=(plan.publish, sent, published), daemon=True)
        publisher.start()
    watch = _Watch(plan, pid)
    deadline = time.monotonic() + plan.max_seconds
    notes: list[str] = []
    while seen.value < plan.expected:
        time.sleep(0.2)
        watch.sample(seen.value, sent.value if publisher is not None else None)
        if watch.stalled() and (publisher is None or not publisher.is_alive()):
            notes.append(f"stalled: no event for {plan.stall_seconds:.0f} s")
            break
        if time.monotonic() > deadline:
            notes.append(f"deadline: stopped after {plan.max_seconds:.0f} s")
            break
    measured = Measured(collected=Collected(), expected=plan.expected, notes=notes)
    measured.machine_cpu_seconds = procstat.machine_busy_seconds() - machine_before
    neighbours_after = procstat.cpu_by_name(NEIGHBOURS)
    measured.neighbour_cpu_seconds = {
        name: neighbours_after[name] - neighbours_before[name] for name in sorted(NEIGHBOURS)
    }
    if pid is not None:
        usage = procstat.usage(pid)
        measured.cpu_seconds = usage.cpu_seconds - cpu_before
        measured.peak_rss_bytes = max(watch.peak_rss, usage.peak_rss_bytes)
    stop.set()
    measured.collected = _result(results, collector, "collector") or Collected()
    if publisher is not None and published is not None:
        times = _result(published, publisher, "publisher")
        if times is not None:
            measured.first_publish, measured.last_publish = times
    if measured.missing:
        notes.append(f"{measured.missing} events missing")
    if unsuccessful := {k: v for k, v in measured.collected.statuses.items() if k != "succeeded"}:
        notes.append(f"not succeeded: {unsuccessful} (see the worker's log)")
    if measured.collected.duplicates:
        notes.append(f"{measured.collected.duplicates} duplicate events")
    return measured


def _result(results: Any, process: Any, name: str) -> Any:
    """What a child process sent back, or None (and the child ended) when it has nothing by the deadline."""
    try:
        value = results.get(timeout=60 if process.is_alive() else 5)
    except queue.Empty:
        say(f"{name} sent no result; stopping it")
        value = None
    process.join(timeout=10)
    if process.is_alive():
        process.terminate()
        process.join(timeout=10)
    return value
