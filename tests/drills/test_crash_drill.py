"""The short crash drill (``make test``): 3 workers, SIGKILLs, a broker restart, a faulty Pidj.

The drill runs once per module; each test checks one of its promises, so a
failure names the promise that broke. The full table is printed on failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drills.crash import DrillConfig, run_drill
from tests.drills.simulator import FaultMix
from tests.drills.summary import Summary

pytestmark = [pytest.mark.drill, pytest.mark.integration]

SHORT = DrillConfig(
    commands=int(os.environ.get("SWITCHBOARD_DRILL_COMMANDS", "360")),
    workers=3,
    store_url=os.environ.get("SWITCHBOARD_DRILL_STORE", "redis://127.0.0.1:6379/12"),
    rate=20.0,  # 18 s of publishing: kills at 4, 8, 12, 16 s and the broker restart at ~10 s
    kill_every=4.0,
    min_kills=3,
    restart_broker=True,
    faults=FaultMix(server_errors=0.10, timeouts=0.05, slow_delay=1.5, burst_every=3.0, burst_size=20),
    settle_timeout=90.0,
    quiet_timeout=20.0,
    log_dir=Path(os.environ["SWITCHBOARD_DRILL_LOG_DIR"])
    if os.environ.get("SWITCHBOARD_DRILL_LOG_DIR")
    else None,
)


@pytest.fixture(scope="module")
def drill(topology_declared: None) -> Iterator[Summary]:
    summary = run_drill(SHORT, progress=print)
    print(summary.table())
    yield summary


def explain(summary: Summary, what: list[str]) -> str:
    return f"{what[:8]}\n{summary.table()}"


def test_every_command_has_exactly_one_terminal_event(drill: Summary) -> None:
    """Each command id ends in one terminal event (duplicates share its event_id); none lost."""
    assert drill.commands == SHORT.commands
    assert not drill.lost, explain(drill, drill.lost)
    assert not drill.two_outcomes, explain(drill, drill.two_outcomes)
    assert not drill.foreign_events, explain(drill, drill.foreign_events)
    assert sum(drill.by_outcome.values()) == SHORT.commands


def test_the_drill_hurt(drill: Summary) -> None:
    """The drill did what it claims: kills, one broker restart, faults of each kind, outcome_unknowns."""
    assert drill.kills >= 3
    assert drill.broker_restarts == 1
    assert {"429", "503", "slow"} <= set(drill.faults_injected), drill.table()
    assert drill.by_outcome[("failed", "outcome_unknown")] > 0, drill.table()
    assert drill.by_outcome[("succeeded", "-")] > SHORT.commands // 2, drill.table()


def test_no_unsafe_side_effect_twice(drill: Summary) -> None:
    """The simulator never did an unsafe command's side effect twice, and every success did it once."""
    assert not drill.repeats, explain(drill, drill.repeats)
    assert not drill.succeeded_not_done, explain(drill, drill.succeeded_not_done)


def test_ambiguous_outcomes_are_outcome_unknown(drill: Summary) -> None:
    """An unsafe command that met a 5xx/timeout is outcome_unknown; a definite failure was never done."""
    assert not drill.ambiguous_not_unknown, explain(drill, drill.ambiguous_not_unknown)
    assert not drill.failed_but_done, explain(drill, drill.failed_but_done)


def test_dead_letters_are_exactly_the_failures(drill: Summary) -> None:
    """switchboard.dead holds a copy of each failed command, carrying its terminal event's id, and nothing else."""
    assert not drill.dead_letter_problems, explain(drill, drill.dead_letter_problems)
    assert drill.dead_letter_copies >= sum(
        n for (status, _), n in drill.by_outcome.items() if status != "succeeded"
    )


def test_queues_end_empty(drill: Summary) -> None:
    """After the last outcome the vendor, unrouted and delay queues are empty."""
    left = {name: depth for name, depth in drill.leftovers.items() if depth}
    assert not left, drill.table()


def test_workers_ride_out_the_broker_restart(drill: Summary) -> None:
    """/readyz fails while the broker is stopped and recovers after; no worker exits by itself."""
    assert drill.readyz_went_down, drill.table()
    assert drill.readyz_came_back, drill.table()
    assert not drill.crashed, explain(drill, drill.crashed)
    assert not drill.notes, explain(drill, drill.notes)
