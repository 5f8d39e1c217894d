"""Several worker processes sharing one store, a Pidj simulator in a thread, the real broker (own vhost)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from handlers.pidj.sandbox import PidjSimulator

SEND = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "hi"}


@pytest.fixture
def pidj() -> Iterator[PidjSimulator]:
    simulator = PidjSimulator()
    with simulator.running_in_thread():
        yield simulator


@pytest.fixture
def shared_store() -> Iterator[str]:
    """One SQLite file shared by every worker of the test (workers on one machine)."""
    with tempfile.TemporaryDirectory(prefix="switchboard-fleet-") as tmp:
        yield f"sqlite:///{tmp}/fleet.sqlite3"


def fleet_env(simulator: PidjSimulator, store_url: str, **extra: Any) -> dict[str, str]:
    account = simulator.account()
    env = {
        "SWITCHBOARD_VENDORS": "pidj",
        "SWITCHBOARD_PIDJ_BASE_URL": account["base_url"],
        "SWITCHBOARD_PIDJ_ACCOUNT_KEY": account["account_key"],
        "SWITCHBOARD_PIDJ_TOKEN": account["token"],
        "SWITCHBOARD_STORE_URL": store_url,
    }
    env.update({f"SWITCHBOARD_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (not within {timeout}s)"
        time.sleep(every)


def calls(simulator: PidjSimulator, path: str, since: float = 0.0, until: float = float("inf")) -> int:
    """Requests the vendor received on ``path`` between two Unix times."""
    return sum(1 for r in list(simulator.requests) if r.path.endswith(path) and since <= r.at <= until)
