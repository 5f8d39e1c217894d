"""CPU time and memory of a process tree, read from /proc (Linux only, no psutil)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system) of a process and its live descendants, and their summed peak RSS."""

    cpu_seconds: float
    peak_rss_bytes: int
    rss_bytes: int


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    text = (_PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, plus those of its reaped children."""
    fields = _stat_fields(pid)
    # After the name: state is fields[0], so utime (14), stime (15), cutime (16), cstime (17) are 11..14.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICKS


def status_kib(pid: int, *keys: str) -> dict[str, int]:
    """``kB`` lines of /proc/<pid>/status (``VmHWM``, ``VmRSS``) in KiB, read in one go so they agree."""
    found = dict.fromkeys(keys, 0)
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in found:
            found[key] = int(value.split()[0])
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (the worker may run helpers, e.g. under py-spy)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def usage(pid: int) -> Usage:
    """CPU seconds and memory of ``pid`` and its live descendants."""
    cpu, peak, rss = 0.0, 0, 0
    for member in descendants(pid):
        try:
            memory = status_kib(member, "VmHWM", "VmRSS")
            cpu += cpu_seconds(member)
            peak += memory["VmHWM"] * 1024
            rss += memory["VmRSS"] * 1024
        except (OSError, ValueError):
            continue
    return Usage(cpu_seconds=cpu, peak_rss_bytes=peak, rss_bytes=rss)


def machine_busy_seconds() -> float:
    """CPU seconds every core spent busy since boot (``/proc/stat``: all but idle and iowait).

    On a shared two-core machine the broker, the simulator and the store server run
    beside the process under test: a consumer's rate is bounded by all of them.
    """
    fields = (_PROC / "stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal (guest and guest_nice are inside user/nice)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def cpu_by_name(names: frozenset[str]) -> dict[str, float]:
    """CPU seconds of every live process whose command name is in ``names``, summed by name.

    Processes that exit between two readings take their time with them: read it
    around a run of long-lived servers (the broker's ``beam.smp``, ``postgres``'s backends).
    """
    found = dict.fromkeys(names, 0.0)
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            if name in found:
                found[name] += cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return found
