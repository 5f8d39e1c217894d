"""A worker that dies mid-call frees its commands in seconds; a live one keeps them; a new one starts small."""

from __future__ import annotations

import threading
import time

import pytest

from handlers.pidj.sandbox import PidjSimulator
from handlers.simulator import Fault
from tests.fleet.conftest import SEND, calls, fleet_env, wait_until
from tests.support.amqp import TERMINAL, EventTap, publish_command
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

FREED_WITHIN_SECONDS = 15.0
"""The default live lease is 10 s (renewed every ~3.3 s): a dead worker's last renewal ends at most 10 s after it died."""


def kill_mid_call(
    pidj: PidjSimulator, env: dict[str, str], path: str, command_type: str
) -> tuple[str, float]:
    """Start a worker, let it call ``path`` (which hangs), SIGKILL it mid-call; returns (command id, kill time)."""
    pidj.add_fault(Fault(kind="slow", delay=60, count=1, path_prefix=f"/api/2020{path}"))
    with WorkerProcess(env) as doomed:
        payload = SEND if command_type == "send_text" else {}
        command_id = publish_command(command_type, payload)
        wait_until(lambda: calls(pidj, path) == 1, 20, "the worker called the vendor")
        doomed.kill()
        return command_id, time.monotonic()


def test_dead_workers_safe_command_is_taken_over_within_15_seconds(
    broker: None, pidj: PidjSimulator, shared_store: str
) -> None:
    """A safe command whose worker was SIGKILLed mid-call succeeds on another worker within 15 s."""
    env = fleet_env(pidj, shared_store, defer_seconds=1)
    with EventTap() as tap:
        command_id, killed_at = kill_mid_call(pidj, env, "/groups", "list_groups")
        with WorkerProcess(env):
            event = tap.wait_for(command_id, timeout=60)
            freed_after = time.monotonic() - killed_at
    assert event["status"] == "succeeded"
    assert freed_after <= FREED_WITHIN_SECONDS, f"blocked {freed_after:.1f}s after the kill"
    assert calls(pidj, "/groups") == 2  # the dead attempt and the one that finished it


def test_dead_workers_unsafe_command_ends_outcome_unknown_within_15_seconds(
    broker: None, pidj: PidjSimulator, shared_store: str
) -> None:
    """An unsafe send interrupted mid-call is not sent again: outcome_unknown, within 15 s of the kill."""
    env = fleet_env(pidj, shared_store, defer_seconds=1)
    with EventTap() as tap:
        command_id, killed_at = kill_mid_call(pidj, env, "/send", "send_text")
        with WorkerProcess(env):
            event = tap.wait_for(command_id, timeout=60)
            freed_after = time.monotonic() - killed_at
    assert (event["status"], event["error"]["code"]) == ("failed", "outcome_unknown")
    assert freed_after <= FREED_WITHIN_SECONDS, f"blocked {freed_after:.1f}s after the kill"
    assert calls(pidj, "/send") == 1


def test_live_worker_keeps_its_lease_through_a_call_longer_than_the_lease(
    broker: None, pidj: PidjSimulator, shared_store: str
) -> None:
    """An 8 s call under a 3 s lease is renewed: a duplicate on another worker waits, the vendor is called once."""
    pidj.add_fault(Fault(kind="slow", delay=8, count=1, path_prefix="/api/2020/groups"))
    env = fleet_env(pidj, shared_store, live_lease_seconds=3, lease_seconds=3, defer_seconds=1)
    with WorkerProcess(env), WorkerProcess(env), EventTap() as tap:
        command_id = publish_command("list_groups", {})
        wait_until(lambda: calls(pidj, "/groups") == 1, 20, "the first call started")
        publish_command("list_groups", {}, id=command_id)  # the duplicate lands while the call runs
        tap.wait_for_count(2, timeout=60)
        events = tap.all_for(command_id)
    assert {e["status"] for e in events} == {"succeeded"}
    assert len({e["event_id"] for e in events}) == 1, "one outcome, published twice"
    assert calls(pidj, "/groups") == 1, "the lease lapsed and another worker called the vendor again"


def test_new_worker_ramps_its_prefetch_up(broker: None, pidj: PidjSimulator, shared_store: str) -> None:
    """With 1.5 s calls a new worker holds at most prefetch_start (4) commands at first, more once they succeed."""
    pidj.add_fault(Fault(kind="slow", delay=1.5, path_prefix="/api/2020/contact"))
    env = fleet_env(pidj, shared_store, prefetch_start=4, max_in_flight=64)
    samples: list[tuple[float, float]] = []
    """(Unix time just after reading the gauge, commands in flight): the reading is older than that time."""
    with WorkerProcess(env) as worker, EventTap() as tap:
        stop = threading.Event()

        def sample() -> None:  # from before the first publish (publishing 40 takes a while)
            while not stop.is_set():
                samples.append((time.time(), worker.metric("switchboard_commands_in_flight", vendor="pidj")))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            ids = [
                publish_command(
                    "create_contact", {"phone_number": f"+1888555{i:04d}", "external_id": f"ramp-{i}"}
                )
                for i in range(40)
            ]
            wait_until(lambda: all(_done(tap, i) for i in ids), 60, "every command finished")
        finally:
            stop.set()
            sampler.join()
        outcomes = {e["status"] for e in tap.events if e.get("command_id") in ids and e["status"] in TERMINAL}
    assert outcomes == {"succeeded"}
    first_call = min(r.at for r in pidj.requests if r.path.startswith("/api/2020/contact"))
    # Before the first calls could have answered (1.5 s), nothing had succeeded: only the first prefetch.
    before = [count for at, count in samples if at < first_call + 1.4]
    assert before, "no reading before the first answers"
    assert max(before) <= 4, f"took {max(before)} at once"
    assert max(count for _, count in samples) > 4, "the prefetch never grew"


def _done(tap: EventTap, command_id: str) -> bool:
    return any(e.get("status") in TERMINAL for e in tap.all_for(command_id))
