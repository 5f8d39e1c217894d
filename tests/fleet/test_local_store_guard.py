"""A worker on a machine-local (SQLite) store refuses to join consumers its store does not know."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import SEND, pidj_env
from tests.support.amqp import EventTap, publish_command
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def exit_code(worker: WorkerProcess, timeout: float = 30.0) -> int | None:
    """The worker's exit code once it exits, None if it is still running at the deadline."""
    assert worker.process is not None
    deadline = time.monotonic() + timeout
    while worker.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return worker.process.poll()


def test_second_store_on_the_same_queue_is_refused(broker: None, pidj: PidjSimulator) -> None:
    """A worker with its own SQLite file exits 2 and says why when another store's worker consumes."""
    with WorkerProcess(pidj_env(pidj)):
        stranger = WorkerProcess(pidj_env(pidj), wait_ready=False).start()
        try:
            assert exit_code(stranger) == 2
            logs = stranger.logs()
        finally:
            stranger.__exit__(None, None, None)
    assert "switchboard.pidj already has 1 consumer(s) but this sqlite store knows 0" in logs
    assert "SWITCHBOARD_ALLOW_UNSHARED_STORE" in logs


def test_unshared_store_starts_when_allowed(broker: None, pidj: PidjSimulator) -> None:
    """SWITCHBOARD_ALLOW_UNSHARED_STORE=true lets the second store's worker start."""
    with (
        WorkerProcess(pidj_env(pidj)),
        WorkerProcess({**pidj_env(pidj), "SWITCHBOARD_ALLOW_UNSHARED_STORE": "true"}) as allowed,
    ):
        assert allowed.get("/readyz")[0] == 200


def test_workers_sharing_one_sqlite_file_start_and_work(
    broker: None, pidj: PidjSimulator, tmp_path: Path
) -> None:
    """Three workers on one machine sharing one SQLite file all start, and each command is sent once."""
    env = {**pidj_env(pidj), "SWITCHBOARD_STORE_URL": f"sqlite:///{tmp_path}/shared.sqlite3"}
    with ExitStack() as stack, EventTap() as tap:
        workers = [stack.enter_context(WorkerProcess(env)) for _ in range(3)]
        assert all(w.get("/readyz")[0] == 200 for w in workers)
        ids = [publish_command("send_text", {**SEND, "text_body": f"shared {i}"}) for i in range(10)]
        for command_id in ids:
            assert tap.wait_for(command_id, timeout=30)["status"] == "succeeded"
    assert len(pidj.effects()) == 10
