"""Retries, ambiguous outcomes, crashes and shutdown, on the real broker and a faulty Pidj."""

from __future__ import annotations

import time

import pytest

from handlers.pidj.sandbox import PidjSimulator
from handlers.simulator import Fault
from tests.runtime.conftest import SEND, pidj_env
from tests.support.amqp import EventTap, drain_queue, publish_command, queue_depth
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def send_requests(pidj: PidjSimulator) -> list[float]:
    return [r.at for r in pidj.requests if r.path.endswith("/send")]


def test_503_is_retried_until_it_works(broker: None, pidj: PidjSimulator) -> None:
    """A 503 (not applied) is retried through a delay queue; the event counts both attempts."""
    pidj.add_fault(Fault(kind="status", status=503, count=1, path_prefix="/api/2020/send"))
    with WorkerProcess(pidj_env(pidj)) as worker, EventTap() as tap:
        command_id = publish_command("send_text", SEND)
        event = tap.wait_for(command_id)
        assert worker.metric("switchboard_retries_total", type="send_text", code="vendor_unavailable") == 1
    assert event["status"] == "succeeded"
    assert event["attempts"] == 2
    assert len(pidj.effects()) == 1


def test_retry_after_is_honoured(broker: None, pidj: PidjSimulator) -> None:
    """After a 429 with Retry-After: 2, the next attempt comes no sooner than 2 s later."""
    pidj.add_fault(Fault(kind="status", status=429, retry_after=2, count=1, path_prefix="/api/2020/send"))
    with WorkerProcess(pidj_env(pidj)), EventTap() as tap:
        command_id = publish_command("send_text", SEND)
        assert tap.wait_for(command_id)["status"] == "succeeded"
    first, second = send_requests(pidj)
    assert second - first >= 2.0


def test_500_on_an_unsafe_command_is_outcome_unknown(broker: None, pidj: PidjSimulator) -> None:
    """A 500 after Pidj sent the text is not retried: failed with outcome_unknown, one text sent."""
    pidj.add_fault(
        Fault(kind="status", status=500, count=1, after_processing=True, path_prefix="/api/2020/send")
    )
    with WorkerProcess(pidj_env(pidj)), EventTap() as tap:
        command_id = publish_command("send_text", SEND)
        event = tap.wait_for(command_id)
    assert event["status"] == "failed"
    assert event["error"]["code"] == "outcome_unknown"
    assert event["error"]["details"]["cause"]["code"] == "vendor_server_error"
    assert len(send_requests(pidj)) == 1
    assert len(drain_queue("switchboard.dead")) == 1


def test_timeout_on_an_unsafe_command_is_outcome_unknown(broker: None, pidj: PidjSimulator) -> None:
    """A vendor that answers after our timeout may have sent the text: outcome_unknown, never resent."""
    pidj.add_fault(Fault(kind="slow", delay=2.0, count=1, path_prefix="/api/2020/send"))
    with WorkerProcess(pidj_env(pidj, vendor_timeout_seconds=0.5)), EventTap() as tap:
        command_id = publish_command("send_text", SEND)
        event = tap.wait_for(command_id)
    assert event["error"]["code"] == "outcome_unknown"
    assert len(send_requests(pidj)) == 1


def test_timeouts_on_a_safe_command_are_retried(broker: None, pidj: PidjSimulator) -> None:
    """A safe command (list_groups) is retried after a timeout and succeeds."""
    pidj.add_fault(Fault(kind="slow", delay=2.0, count=1, path_prefix="/api/2020/groups"))
    with WorkerProcess(pidj_env(pidj, vendor_timeout_seconds=0.5)), EventTap() as tap:
        command_id = publish_command("list_groups", {})
        event = tap.wait_for(command_id)
    assert event["status"] == "succeeded"
    assert event["attempts"] == 2


def test_gives_up_after_max_attempts(broker: None, pidj: PidjSimulator) -> None:
    """A vendor that keeps answering 503 ends the command failed after max attempts, with the last error."""
    pidj.add_fault(Fault(kind="status", status=503, path_prefix="/api/2020/send"))
    with WorkerProcess(pidj_env(pidj, max_attempts=3)), EventTap() as tap:
        command_id = publish_command("send_text", SEND)
        event = tap.wait_for(command_id, timeout=30)
    assert event["status"] == "failed"
    assert event["attempts"] == 3
    assert event["error"]["code"] == "vendor_unavailable"
    assert event["error"]["details"]["gave_up"] is True
    assert len(send_requests(pidj)) == 3
    assert len(drain_queue("switchboard.dead")) == 1


def test_sigterm_finishes_in_flight_commands(broker: None, pidj: PidjSimulator) -> None:
    """On SIGTERM the worker finishes what it holds, leaves the rest queued, and exits 0: nothing is lost."""
    pidj.add_fault(Fault(kind="slow", delay=1.5, path_prefix="/api/2020/send"))
    ids = []
    with EventTap() as tap:
        worker = WorkerProcess(pidj_env(pidj, max_in_flight=5)).start()
        try:
            ids = [publish_command("send_text", {**SEND, "text_body": f"drain {i}"}) for i in range(20)]
            deadline = time.monotonic() + 10
            while len(send_requests(pidj)) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert worker.terminate(timeout=30) == 0
        finally:
            worker.__exit__(None, None, None)
        tap.all_for("")  # collect what has arrived
        finished = {e["command_id"] for e in tap.events if e.get("status") == "succeeded"}
        assert len(finished) >= 5
        assert queue_depth("switchboard.pidj") == 20 - len(finished)
        pidj.faults.clear()
        with WorkerProcess(pidj_env(pidj)):
            for command_id in ids:
                assert tap.wait_for(command_id)["status"] == "succeeded"
    assert len(pidj.effects()) == 20


def test_worker_killed_mid_call_gives_outcome_unknown(broker: None, pidj: PidjSimulator) -> None:
    """A send_text whose worker died mid-call is not sent again: the next worker reports outcome_unknown."""
    pidj.add_fault(Fault(kind="slow", delay=3.0, count=1, path_prefix="/api/2020/send"))
    env = pidj_env(
        pidj, lease_seconds=2, handler_timeout_seconds=1.5, vendor_timeout_seconds=10, defer_seconds=1
    )
    store = {"SWITCHBOARD_STORE_URL": "redis://127.0.0.1:6379/14"}
    import redis

    redis.Redis.from_url(store["SWITCHBOARD_STORE_URL"]).flushdb()
    with EventTap() as tap:
        first = WorkerProcess({**env, **store}).start()
        try:
            command_id = publish_command("send_text", SEND)
            deadline = time.monotonic() + 10
            while not send_requests(pidj) and time.monotonic() < deadline:
                time.sleep(0.05)
            first.kill()
        finally:
            first.__exit__(None, None, None)
        with WorkerProcess({**env, **store}):
            event = tap.wait_for(command_id, timeout=30)
    assert event["error"]["code"] == "outcome_unknown"
    assert "previous_attempt_started_at" in event["error"]["details"]
    assert len(send_requests(pidj)) == 1


def test_redis_store_shared_by_two_workers(broker: None, pidj: PidjSimulator) -> None:
    """Two workers sharing a Redis store send each of 50 commands (each published twice) exactly once."""
    import redis

    url = "redis://127.0.0.1:6379/14"
    redis.Redis.from_url(url).flushdb()
    env = {**pidj_env(pidj, defer_seconds=1), "SWITCHBOARD_STORE_URL": url}
    with WorkerProcess(env), WorkerProcess(env), EventTap() as tap:
        ids = [f"shared-{i}" for i in range(50)]
        for command_id in ids:
            publish_command("send_text", {**SEND, "text_body": command_id}, id=command_id)
            publish_command("send_text", {**SEND, "text_body": command_id}, id=command_id)
        tap.wait_for_count(100, timeout=60)
        for command_id in ids:
            assert len({e["event_id"] for e in tap.all_for(command_id)}) == 1
    texts = sorted(e.data.get("text_body", "") for e in pidj.effects())
    assert texts == sorted(ids)
