"""What the crash drill saw, the checks it must pass, and a table of it all.

The checks compare three independent records: the events the worker published,
the side effects the vendor simulator did (with the faults it injected), and
the dead-letter queue.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import pika

from tests.drills.simulator import AMBIGUOUS, COMMAND_ID

TERMINAL = frozenset({"succeeded", "failed", "rejected"})
UNSAFE_TYPES = frozenset(
    {
        "send_text",
        "create_job",
        "assign_list",
        "upload_list",
        "create_media",
        "create_user",
        "initiate_task",
        "subscribe_series",
        "initiate_survey",
    }
)
# Types whose success must show up as a side effect at the vendor.
EFFECT_TYPES = frozenset({"send_text", "initiate_task", "create_contact"})
SHOWN = 8
"""Command ids listed per problem (the rest are counted)."""


@dataclass
class Published:
    type: str
    copies: int = 1


@dataclass
class Observations:
    """Raw records the drill collected."""

    commands: dict[str, Published]
    events: list[dict[str, Any]]
    effects: dict[str, int]
    faults: dict[str, Counter[str]]
    dead_letters: list[tuple[pika.BasicProperties, bytes]]
    leftovers: dict[str, int]
    in_flight_at_end: float = 0.0
    published_at: dict[str, float] = field(default_factory=dict)
    """Command id -> Unix time its first copy was confirmed by the broker."""


@dataclass
class Summary:
    commands: int = 0
    published: int = 0
    workers: int = 0
    kills: int = 0
    broker_restarts: int = 0
    node_kills: int = 0
    """Cluster drill: broker nodes SIGKILLed (and started again)."""
    cluster_events: list[str] = field(default_factory=list)
    readyz_went_down: bool | None = None
    readyz_came_back: bool | None = None
    seconds: float = 0.0
    settle_seconds: float = 0.0
    by_type: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(status, error code or "-") -> commands."""
    faults_injected: Counter[str] = field(default_factory=Counter)
    duplicate_events: int = 0
    stale_events: int = 0
    """Events for an earlier drill run's commands (left in its queues)."""
    """Events with the event_id of an earlier one (a duplicate delivery re-published the stored event)."""
    dead_letter_copies: int = 0
    unexplained_unknown: int = 0
    """outcome_unknown with no ambiguous fault injected: a worker was killed while it held the command."""
    lost: list[str] = field(default_factory=list)
    two_outcomes: list[str] = field(default_factory=list)
    repeats: list[str] = field(default_factory=list)
    ambiguous_not_unknown: list[str] = field(default_factory=list)
    failed_but_done: list[str] = field(default_factory=list)
    succeeded_not_done: list[str] = field(default_factory=list)
    foreign_events: list[str] = field(default_factory=list)
    dead_letter_problems: list[str] = field(default_factory=list)
    leftovers: dict[str, int] = field(default_factory=dict)
    crashed: list[str] = field(default_factory=list)
    """Workers that exited without being killed (each was restarted so the drill could go on)."""
    notes: list[str] = field(default_factory=list)
    """Problems found outside the analysis (publisher error, readiness, time-outs)."""
    latencies: list[float] = field(default_factory=list)
    """Seconds from a command's first publish to its terminal event (``occurred_at``), sorted."""

    def latency(self, quantile: float) -> float:
        """Nearest-rank percentile of publish-to-terminal-event seconds (0 when none were measured)."""
        if not self.latencies:
            return 0.0
        rank = max(1, math.ceil(quantile * len(self.latencies)))
        return self.latencies[min(rank, len(self.latencies)) - 1]

    def problems(self) -> list[str]:
        found = list(self.notes) + self.crashed
        checks = [
            ("commands without a terminal event (lost)", self.lost),
            ("commands with two different terminal events", self.two_outcomes),
            ("unsafe commands whose side effect happened more than once", self.repeats),
            (
                "unsafe commands that met an ambiguous fault but did not end outcome_unknown",
                self.ambiguous_not_unknown,
            ),
            ("commands failed with a definite error although the vendor did it", self.failed_but_done),
            ("commands succeeded with no side effect at the vendor", self.succeeded_not_done),
            ("events for command ids the drill never published", self.foreign_events),
            ("dead-letter queue does not match the failed/rejected events", self.dead_letter_problems),
        ]
        for title, ids in checks:
            if ids:
                shown = ", ".join(ids[:SHOWN]) + (f" ... (+{len(ids) - SHOWN})" if len(ids) > SHOWN else "")
                found.append(f"{len(ids)} {title}: {shown}")
        left = {name: depth for name, depth in self.leftovers.items() if depth}
        if left:
            found.append(f"queues not empty at the end: {left}")
        return found

    def table(self) -> str:
        rows = [
            ("commands (distinct ids)", str(self.commands)),
            ("messages published (with duplicates)", str(self.published)),
            (
                "workers / kills (SIGKILL) / broker restarts",
                f"{self.workers} / {self.kills} / {self.broker_restarts}",
            ),
            *(
                [("cluster: leader stops / node kills", f"{self.broker_restarts} / {self.node_kills}")]
                if self.cluster_events
                else []
            ),
            (
                "/readyz down during restart / back after",
                f"{_yes(self.readyz_went_down)} / {_yes(self.readyz_came_back)}",
            ),
            (
                "time: total / waiting for the last outcomes",
                f"{self.seconds:.1f}s / {self.settle_seconds:.1f}s",
            ),
            (
                "publish to terminal event: p50 / p99 / max",
                f"{self.latency(0.5):.1f}s / {self.latency(0.99):.1f}s / {self.latency(1.0):.1f}s",
            ),
            ("commands by type", _counts(self.by_type)),
            ("faults injected", _counts(self.faults_injected)),
        ]
        for (status, code), count in sorted(self.by_outcome.items()):
            rows.append((f"  {status} {code}", str(count)))
        rows += [
            ("outcome_unknown from kills (no ambiguous fault)", str(self.unexplained_unknown)),
            ("re-published duplicate events (same event_id)", str(self.duplicate_events)),
            ("dead-letter copies", str(self.dead_letter_copies)),
            ("events for an earlier run's commands", str(self.stale_events)),
            ("workers that exited by themselves", str(len(self.crashed))),
            ("lost", str(len(self.lost))),
            ("two outcomes", str(len(self.two_outcomes))),
            ("unsafe repeats", str(len(self.repeats))),
            ("ambiguous not outcome_unknown", str(len(self.ambiguous_not_unknown))),
            ("definite failure but done", str(len(self.failed_but_done))),
            ("success with no side effect", str(len(self.succeeded_not_done))),
            ("queues left", _counts(Counter({k: v for k, v in self.leftovers.items() if v}))),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        problems = self.problems()
        lines.append("verdict: " + ("PASS" if not problems else "FAIL"))
        lines += [f"  - {problem}" for problem in problems]
        return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else "yes" if value else "NO"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}={count}" for key, count in sorted(counter.items())) or "-"


def analyze(summary: Summary, seen: Observations) -> Summary:
    """Fill ``summary`` from the raw records."""
    summary.commands = len(seen.commands)
    summary.published = sum(p.copies for p in seen.commands.values())
    summary.by_type = Counter(p.type for p in seen.commands.values())
    for counts in seen.faults.values():
        summary.faults_injected.update(counts)
    summary.leftovers = dict(seen.leftovers)
    terminal = _terminal_events(summary, seen.commands, seen.events)
    for command_id, published in sorted(seen.commands.items()):
        _check_command(summary, command_id, published, terminal.get(command_id), seen)
    copies = Counter(str(e.get("command_id")) for e in seen.events if e.get("status") in TERMINAL)
    _check_dead_letters(summary, terminal, seen.dead_letters, copies)
    summary.latencies = sorted(
        _seconds_since(seen.published_at[command_id], event)
        for command_id, event in terminal.items()
        if command_id in seen.published_at
    )
    return summary


def _seconds_since(published_at: float, event: dict[str, Any]) -> float:
    """From the first publish to the event's ``occurred_at`` (same machine, same clock)."""
    occurred = datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00")).timestamp()
    return max(0.0, occurred - published_at)


def _terminal_events(
    summary: Summary, commands: dict[str, Published], events: Iterable[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """command id -> its terminal event; notes duplicates, conflicts and strangers."""
    by_id: dict[str, dict[str, Any]] = {}
    seen_event_ids: set[str] = set()
    for event in events:
        if event.get("status") not in TERMINAL:
            continue
        command_id = str(event.get("command_id"))
        if command_id not in commands:
            if COMMAND_ID.fullmatch(command_id):
                summary.stale_events += 1  # an earlier run's command, left in a queue (see leftovers)
            else:
                summary.foreign_events.append(f"{command_id} ({event.get('type')}.{event.get('status')})")
            continue
        if event["event_id"] in seen_event_ids:
            summary.duplicate_events += 1
            continue
        seen_event_ids.add(event["event_id"])
        if command_id in by_id:
            summary.two_outcomes.append(command_id)
            continue
        by_id[command_id] = event
    return by_id


def _check_command(
    summary: Summary, command_id: str, published: Published, event: dict[str, Any] | None, seen: Observations
) -> None:
    if event is None:
        summary.lost.append(command_id)
        return
    status = event["status"]
    code = (event.get("error") or {}).get("code", "-")
    summary.by_outcome[(status, code)] += 1
    unsafe = published.type in UNSAFE_TYPES
    effects = seen.effects.get(command_id, 0)
    ambiguous = any(label in AMBIGUOUS for label in seen.faults.get(command_id, Counter()))
    if unsafe and effects > 1:
        summary.repeats.append(f"{command_id} x{effects}")
    if unsafe and ambiguous and code != "outcome_unknown":
        summary.ambiguous_not_unknown.append(f"{command_id} ({status} {code})")
    if code == "outcome_unknown" and not ambiguous:
        summary.unexplained_unknown += 1
    if status == "failed" and code != "outcome_unknown" and effects and unsafe:
        summary.failed_but_done.append(f"{command_id} ({code})")
    if status == "succeeded" and published.type in EFFECT_TYPES and not effects:
        summary.succeeded_not_done.append(command_id)


def _check_dead_letters(
    summary: Summary,
    terminal: dict[str, dict[str, Any]],
    letters: list[tuple[pika.BasicProperties, bytes]],
    copies: Counter[str],
) -> None:
    """switchboard.dead holds a copy of each failed/rejected command, with its event's id; nothing else."""
    summary.dead_letter_copies = len(letters)
    expected = {cid: e["event_id"] for cid, e in terminal.items() if e["status"] in ("failed", "rejected")}
    found: dict[str, set[str]] = {}
    for properties, body in letters:
        headers = properties.headers or {}
        command_id = properties.message_id or str(orjson.loads(body).get("id"))
        found.setdefault(command_id, set()).add(str(headers.get("x-switchboard-event-id")))
    for command_id in sorted(set(found) - set(expected)):
        summary.dead_letter_problems.append(
            f"{command_id} dead-lettered but its outcome is not failed/rejected"
        )
    for command_id, event_id in sorted(expected.items()):
        if command_id not in found:
            summary.dead_letter_problems.append(
                f"{command_id} failed but is not in switchboard.dead (its event was published {copies[command_id]}x)"
            )
        elif found[command_id] != {event_id}:
            summary.dead_letter_problems.append(
                f"{command_id} dead letters carry event ids {sorted(found[command_id])}"
            )
