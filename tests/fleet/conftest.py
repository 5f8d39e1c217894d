"""Several worker processes sharing one store, a Pidj simulator in a thread, the real broker (own vhost)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import SEND, pidj, pidj_env

__all__ = ["SEND", "pidj"]


@pytest.fixture
def shared_store() -> Iterator[str]:
    """One SQLite file shared by every worker of the test (workers on one machine)."""
    with tempfile.TemporaryDirectory(prefix="switchboard-fleet-") as tmp:
        yield f"sqlite:///{tmp}/fleet.sqlite3"


def fleet_env(simulator: PidjSimulator, store_url: str, **extra: Any) -> dict[str, str]:
    return pidj_env(simulator, store_url=store_url, **extra)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (not within {timeout}s)"
        time.sleep(every)


def calls(simulator: PidjSimulator, path: str, since: float = 0.0, until: float = float("inf")) -> int:
    """Requests the vendor received on ``path`` between two Unix times."""
    return sum(1 for r in list(simulator.requests) if r.path.endswith(path) and since <= r.at <= until)
