"""A Pidj simulator in a thread and a worker pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.support.worker import WorkerProcess

SEND = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "hi"}


@pytest.fixture
def pidj() -> Iterator[PidjSimulator]:
    simulator = PidjSimulator()
    with simulator.running_in_thread():
        yield simulator


def pidj_env(simulator: PidjSimulator, **extra: Any) -> dict[str, str]:
    account = simulator.account()
    env = {
        "SWITCHBOARD_VENDORS": "pidj",
        "SWITCHBOARD_PIDJ_BASE_URL": account["base_url"],
        "SWITCHBOARD_PIDJ_ACCOUNT_KEY": account["account_key"],
        "SWITCHBOARD_PIDJ_TOKEN": account["token"],
    }
    env.update({f"SWITCHBOARD_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def worker(broker: None, pidj: PidjSimulator) -> Iterator[WorkerProcess]:
    with WorkerProcess(pidj_env(pidj)) as process:
        yield process
