"""Fixtures for the Peerly tests: a simulator in the test's loop, clients on it, contexts."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import structlog

from handlers.peerly.client import PeerlyClient
from handlers.peerly.sandbox import SANDBOX_EMAIL, SANDBOX_PASSWORD, PeerlySimulator
from handlers.peerly.settings import PeerlyAccount
from worker.registry import CommandContext
from worker.vendor_http import VendorHTTP


class MemorySuppressions:
    """An empty suppression list (no Peerly command reads it)."""

    async def add(self, account: str, number: str, *, reason: str, source: str, now: float) -> None:
        return None

    async def remove(self, account: str, number: str) -> bool:
        return False

    async def contains(self, account: str, number: str) -> bool:
        return False

    async def list(self, account: str | None = None) -> list[dict[str, Any]]:
        return []


@pytest.fixture
async def sim() -> AsyncIterator[PeerlySimulator]:
    """A strict Peerly simulator on loopback whose lists turn ACTIVE after 0.4 s."""
    simulator = PeerlySimulator(list_active_after=0.4, seed=1)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http_session:
        yield http_session


ClientFactory = Callable[..., PeerlyClient]


@pytest.fixture
def make_client(sim: PeerlySimulator, session: aiohttp.ClientSession) -> ClientFactory:
    """``make_client(clock=..., **account_fields)``: a client of the simulator's account."""

    def build(
        *, clock: Callable[[], float] | None = None, timeout: float = 5.0, **fields: Any
    ) -> PeerlyClient:
        settings = {
            "base_url": sim.api_url,
            "email": SANDBOX_EMAIL,
            "password": SANDBOX_PASSWORD,
            "account_id": "12345678",
            "list_poll_seconds": 0.1,
            **fields,
        }
        account = PeerlyAccount.model_validate(settings)
        http = VendorHTTP("peerly", session, account.base_url, timeout=timeout)
        if clock is None:
            return PeerlyClient(account, http)
        return PeerlyClient(account, http, clock=clock)

    return build


@pytest.fixture
def client(make_client: ClientFactory) -> PeerlyClient:
    return make_client()


def make_ctx(
    client: PeerlyClient,
    *,
    type: str = "test",
    state: dict[str, Any] | None = None,
    first_attempt_at: datetime.datetime | None = None,
    attempt: int = 1,
    resumed: bool = False,
) -> CommandContext[PeerlyClient]:
    """A CommandContext as the runtime builds one, by hand."""
    return CommandContext(
        command_id="cmd-1",
        type=type,
        account="default",
        attempt=attempt,
        meta={},
        client=client,
        log=structlog.get_logger("test.peerly"),
        first_attempt_at=first_attempt_at or datetime.datetime.now(datetime.UTC),
        suppressions=MemorySuppressions(),
        state=state,
        resumed=resumed,
    )


P2P_UPLOAD: dict[str, Any] = {
    "list_name": "Volunteers",
    "suppress_cell_phones": 4,
    "use_nat_dnc": 1,
    "use_state_dnc": 1,
    "rows": [
        {"lead_phone": "(202) 555-0143", "first_name": "Ada"},
        {"lead_phone": "+1 312 555 0187", "first_name": "Grace"},
    ],
}
"""The smallest upload the upload table allows: P2P, both DNC lists used, no opt-in."""
