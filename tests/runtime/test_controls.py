"""Operator controls on the real broker: pause, resume and cancel across several workers."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import SEND, pidj_env
from tests.support.amqp import AMQP_URL, EventTap, publish_command
from tests.support.worker import SWITCHBOARD, WorkerProcess

pytestmark = pytest.mark.integration


def cli(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWITCHBOARD_AMQP_URL": AMQP_URL, "SWITCHBOARD_STORE_URL": store_url}
    return subprocess.run([str(SWITCHBOARD), *args], env=env, capture_output=True, text=True, timeout=60)


def wait_until(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_pause_holds_three_workers_and_resume_drains(
    broker: None, pidj: PidjSimulator, tmp_path: Path
) -> None:
    """Within a second of `pause` no worker starts the account's commands; `resume` sends them all."""
    store = f"sqlite:///{tmp_path}/shared.sqlite3"
    env = {**pidj_env(pidj, defer_seconds=1), "SWITCHBOARD_STORE_URL": store}
    with ExitStack() as stack, EventTap() as tap:
        workers = [stack.enter_context(WorkerProcess(env)) for _ in range(3)]
        paused = cli(store, "pause", "--account", "default")
        assert paused.returncode == 0, paused.stderr
        time.sleep(1.0)  # the promise: every worker has it within one second
        ids = [publish_command("send_text", {**SEND, "text_body": f"held {i}"}) for i in range(20)]
        wait_until(
            lambda: (
                sum(
                    w.metric("switchboard_deferrals_total", type="send_text", reason="paused")
                    for w in workers
                )
                >= 20
            )
        )
        assert pidj.effects() == []
        assert any(w.metric("switchboard_paused", account="default", type="*") == 1 for w in workers)
        assert tap.wait_for_routing_key("control.paused")["account"] == "default"
        resumed = cli(store, "resume", "--account", "default")
        assert resumed.returncode == 0, resumed.stderr
        for command_id in ids:
            assert tap.wait_for(command_id, timeout=30)["status"] == "succeeded"
    assert len(pidj.effects()) == 20


def test_cancel_before_start_and_after_finish(broker: None, pidj: PidjSimulator, tmp_path: Path) -> None:
    """A cancelled waiting command ends failed/cancelled and is never sent; a finished one cannot be cancelled."""
    store = f"sqlite:///{tmp_path}/shared.sqlite3"
    env = {**pidj_env(pidj, defer_seconds=1), "SWITCHBOARD_STORE_URL": store}
    with WorkerProcess(env), EventTap() as tap:
        done_id = publish_command("send_text", SEND)
        assert tap.wait_for(done_id)["status"] == "succeeded"
        late = cli(store, "cancel", done_id)
        assert late.returncode != 0
        assert "already finished" in late.stderr
        assert cli(store, "pause", "--account", "default", "--type", "send_text").returncode == 0
        time.sleep(1.0)
        keep = publish_command("send_text", {**SEND, "text_body": "keep"})
        drop = publish_command("send_text", {**SEND, "text_body": "drop"})
        cancelled = cli(store, "cancel", drop, "--reason", "wrong audience")
        assert cancelled.returncode == 0, cancelled.stderr
        assert cli(store, "resume", "--account", "default", "--type", "send_text").returncode == 0
        assert tap.wait_for(keep, timeout=30)["status"] == "succeeded"
        event = tap.wait_for(drop, timeout=30)
    assert (event["status"], event["error"]["code"]) == ("failed", "cancelled")
    assert "wrong audience" in event["error"]["message"]
    assert sorted(e.data["text_body"] for e in pidj.effects()) == ["hi", "keep"]
