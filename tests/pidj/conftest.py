"""Fixtures for the Pidj tests: a simulator in the test's loop, a client on it, command contexts."""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog

from handlers import build_registry
from handlers.pidj.client import PidjClient
from handlers.pidj.sandbox import PidjSimulator
from handlers.pidj.settings import PidjAccount
from worker.registry import CommandContext
from worker.vendor_http import VendorHTTP

registry = build_registry()


class MemorySuppressions:
    """A suppression list in a dict, as the shared store would keep it."""

    def __init__(self) -> None:
        self.numbers: dict[tuple[str, str], dict[str, Any]] = {}

    async def add(
        self, account: str, number: str, *, reason: str, source: str, now: float, keep_existing: bool = False
    ) -> None:
        if keep_existing and (account, number) in self.numbers:
            return
        self.numbers[(account, number)] = {"reason": reason, "source": source, "created_at": now}

    async def remove(self, account: str, number: str, *, source: str | None = None) -> bool:
        entry = self.numbers.get((account, number))
        if entry is None or (source is not None and entry["source"] != source):
            return False
        return self.numbers.pop((account, number), None) is not None

    async def contains(self, account: str, number: str) -> bool:
        return (account, number) in self.numbers

    async def list(self, account: str | None = None) -> list[dict[str, Any]]:
        return [
            {"account": owner, "number": number, **info}
            for (owner, number), info in sorted(self.numbers.items())
            if account is None or owner == account
        ]


class NoForgetDeduper:
    """``first_time`` with expiry and nothing else (the shared store's deduper today)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def first_time(self, key: str, now: float, ttl_seconds: float) -> bool:
        if self.seen.get(key, 0.0) > now:
            return False
        self.seen[key] = now + ttl_seconds
        return True


class MemoryDeduper(NoForgetDeduper):
    """A deduper that can also drop a key."""

    async def forget(self, key: str) -> None:
        self.seen.pop(key, None)


@pytest.fixture
async def sim() -> AsyncIterator[PidjSimulator]:
    """A strict Pidj simulator on loopback, seeded."""
    simulator = PidjSimulator(seed=1)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http_session:
        yield http_session


@pytest.fixture
def make_client(sim: PidjSimulator, session: aiohttp.ClientSession) -> Callable[..., PidjClient]:
    """``make_client(**account_fields)``: a client of the simulator's account (fields override)."""

    def build(*, timeout: float = 5.0, **fields: Any) -> PidjClient:
        account = PidjAccount.model_validate({**sim.account(), **fields})
        return PidjClient(account, VendorHTTP("pidj", session, account.base_url, timeout=timeout))

    return build


@pytest.fixture
def suppressions() -> MemorySuppressions:
    return MemorySuppressions()


Run = Callable[..., Awaitable[Any]]


@pytest.fixture
def run(make_client: Callable[..., PidjClient], suppressions: MemorySuppressions) -> Run:
    """``await run(type, payload)``: the command's check, then its handler, as the dispatcher does."""
    client = make_client()

    async def execute(
        command_type: str, payload: dict[str, Any], *, account: str = "default", attempt: int = 1
    ) -> Any:
        spec = registry.commands[command_type]
        ctx: CommandContext[PidjClient] = CommandContext(
            command_id=f"test-{time.monotonic_ns()}",
            type=command_type,
            account=account,
            attempt=attempt,
            meta={},
            client=client,
            log=structlog.get_logger("test"),
            first_attempt_at=datetime.datetime.now(datetime.UTC),
            suppressions=suppressions,
        )
        checked = spec.check(dict(payload)) if spec.check is not None else dict(payload)
        return await spec.handler(checked, ctx)

    return execute
