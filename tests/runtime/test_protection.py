"""Protecting the vendors and ourselves: circuit breaker and shared rate limits."""

from __future__ import annotations

import time

import pytest
import redis

from handlers.pidj.sandbox import PidjSimulator
from handlers.simulator import Fault
from tests.runtime.conftest import SEND, pidj_env
from tests.support.amqp import EventTap, publish_command
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def requests_to(pidj: PidjSimulator, path: str) -> list[float]:
    return sorted(r.at for r in pidj.requests if r.path.endswith(path))


def test_breaker_opens_on_a_failing_vendor_and_recovers(broker: None, pidj: PidjSimulator) -> None:
    """Consecutive 503s open the breaker (commands wait, Pidj is left alone); once Pidj recovers all succeed."""
    pidj.add_fault(Fault(kind="status", status=503, path_prefix="/api/2020/groups"))
    env = pidj_env(pidj, breaker_failures=3, breaker_cooldown_seconds=2, max_attempts=50)
    with WorkerProcess(env) as worker, EventTap() as tap:
        ids = [publish_command("list_groups", {}) for _ in range(10)]
        deadline = time.monotonic() + 20
        while worker.metric("switchboard_circuit_breaker_state", vendor="pidj") != 2:
            assert time.monotonic() < deadline, "breaker did not open"
            time.sleep(0.05)
        calls_when_open = len(requests_to(pidj, "/groups"))
        time.sleep(1.0)  # inside the 2 s cool-down: nobody calls Pidj
        assert len(requests_to(pidj, "/groups")) == calls_when_open
        pidj.faults.clear()
        for command_id in ids:
            assert tap.wait_for(command_id, timeout=60)["status"] == "succeeded"
        assert worker.metric("switchboard_circuit_breaker_state", vendor="pidj") == 0
        assert worker.metric("switchboard_deferrals_total", type="list_groups", reason="circuit_open") > 0


def test_rate_limit_is_shared_by_workers_through_redis(broker: None, pidj: PidjSimulator) -> None:
    """Two workers with a 5 requests/s account limit in Redis together stay under it."""
    url = "redis://127.0.0.1:6379/14"
    redis.Redis.from_url(url).flushdb()
    env = {**pidj_env(pidj), "SWITCHBOARD_STORE_URL": url, "SWITCHBOARD_PIDJ_RATE_LIMIT_PER_SECOND": "5"}
    with WorkerProcess(env), WorkerProcess(env), EventTap() as tap:
        ids = [publish_command("send_text", {**SEND, "text_body": f"limited {i}"}) for i in range(20)]
        for command_id in ids:
            assert tap.wait_for(command_id, timeout=60)["status"] == "succeeded"
    sent = requests_to(pidj, "/send")
    assert len(sent) == 20
    # A burst of 5, then one every 0.2 s: the 20th comes no sooner than 3 s after
    # the first, and any 11 requests span at least (11 - 5) x 0.2 = 1.2 s.
    assert sent[-1] - sent[0] >= 2.9
    for i in range(len(sent) - 10):
        assert sent[i + 10] - sent[i] >= 1.15, "faster than the shared limit"
