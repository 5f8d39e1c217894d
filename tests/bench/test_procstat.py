"""The harness's /proc readings: a process's CPU by its name, and the whole machine's."""

from __future__ import annotations

import time
from pathlib import Path

from bench import procstat


def _spin(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_cpu_by_name_counts_this_process_and_nothing_for_an_absent_name() -> None:
    """This process's CPU shows under its command name and grows with work; an unknown name reads 0."""
    name = Path("/proc/self/comm").read_text().strip()
    absent = "no-such-proc"
    before = procstat.cpu_by_name(frozenset({name, absent}))
    _spin(0.3)
    after = procstat.cpu_by_name(frozenset({name, absent}))
    assert after[name] - before[name] >= 0.2
    assert before[absent] == after[absent] == 0.0


def test_machine_busy_seconds_covers_this_process_work() -> None:
    """Busy time of all cores grows at least by what this process spent meanwhile."""
    before = procstat.machine_busy_seconds()
    spent = time.process_time()
    _spin(0.3)
    spent = time.process_time() - spent
    # /proc/stat ticks at 1/CLK_TCK: allow one tick per core of rounding.
    assert procstat.machine_busy_seconds() - before >= spent - 0.05
