"""The short cluster crash drill (``make test``): 3 workers on the three-node cluster, SIGKILLs,
the node leading switchboard.pidj stopped and started again, another node SIGKILLed once.

The drill runs once per module; each test checks one of its promises.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.drills.crash import DrillConfig, run_drill
from tests.drills.simulator import FaultMix
from tests.drills.summary import Summary
from tests.support import amqp

pytestmark = [pytest.mark.drill, pytest.mark.integration, pytest.mark.cluster]

SHORT = DrillConfig(
    commands=int(os.environ.get("SWITCHBOARD_TEST_CLUSTER_DRILL_COMMANDS", "360")),
    workers=3,
    store_url=None,  # a shared sqlite file: no Redis database to collide with other runs
    rate=20.0,  # 18 s of publishing: the leader stop at 6 s, the node kill at 12 s
    kill_every=4.0,
    min_kills=3,
    restart_broker=True,
    faults=FaultMix(server_errors=0.10, timeouts=0.05, slow_delay=1.5, burst_every=3.0, burst_size=20),
    settle_timeout=90.0,
    quiet_timeout=20.0,
    cluster=True,
)


@pytest.fixture(scope="module")
def drill(cluster_url: str) -> Iterator[Summary]:
    with amqp.use_broker(cluster_url):
        summary = run_drill(SHORT, progress=print)
    print(summary.table())
    yield summary


def test_nothing_lost_nothing_twice(drill: Summary) -> None:
    """Every published (confirmed) command ends in exactly one terminal event across the node losses."""
    assert drill.commands == SHORT.commands
    assert not drill.lost, drill.table()
    assert not drill.two_outcomes, drill.table()
    assert sum(drill.by_outcome.values()) == SHORT.commands


def test_no_unsafe_side_effect_twice(drill: Summary) -> None:
    """No unsafe vendor call happened twice; ambiguous ones end outcome_unknown."""
    assert not drill.repeats, drill.table()
    assert not drill.ambiguous_not_unknown, drill.table()
    assert not drill.failed_but_done, drill.table()
    assert not drill.succeeded_not_done, drill.table()


def test_the_cluster_was_hurt(drill: Summary) -> None:
    """The leader of switchboard.pidj was stopped and restarted, another node killed, workers killed."""
    assert drill.broker_restarts == 1 and drill.node_kills == 1, drill.table()
    assert drill.kills >= 3, drill.table()


def test_dead_letters_and_queues_end_right(drill: Summary) -> None:
    """switchboard.dead holds exactly the failures; work queues end empty; workers ready; none crashed."""
    assert not drill.dead_letter_problems, drill.table()
    assert not {name: depth for name, depth in drill.leftovers.items() if depth}, drill.table()
    assert drill.readyz_came_back, drill.table()
    assert not drill.crashed, drill.table()
    assert not drill.notes, drill.table()
