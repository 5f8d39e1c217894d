"""Uploads have a time budget that grows with the file (issue 15 item 5), not the 15 s of a JSON call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from handlers.peerly.files import upload_seconds
from handlers.peerly.media import create_media
from handlers.peerly.sandbox import PeerlySimulator
from handlers.peerly.settings import PeerlyAccount
from handlers.simulator import Fault
from tests.peerly.conftest import ClientFactory, make_ctx
from worker import deadline
from worker.errors import VendorUnavailable

MIB = 1024 * 1024


def test_budget_is_vendor_timeout_plus_size_at_the_slowest_rate() -> None:
    """100 MiB at the default 256 KiB/s with the 15 s vendor timeout: 415 s."""
    account = PeerlyAccount.model_validate({"email": "a@b.c", "password": "p"})
    assert upload_seconds(account, 15.0, 100 * MIB) == pytest.approx(415.0)
    assert upload_seconds(account, 15.0, 0) == 15.0


async def test_slow_upload_within_its_budget_succeeds(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Peerly taking 2 s over a 4 MiB upload: past the 1 s vendor and handler timeouts, inside the upload's 5 s."""
    with (tmp_path / "clip.mp4").open("wb") as handle:
        handle.truncate(4 * MIB)
    client = make_client(timeout=1.0, upload_dir=str(tmp_path), upload_min_bytes_per_second=MIB)
    sim.add_fault(Fault(kind="slow", delay=2.0, path_prefix="/api/v2/media"))
    async with asyncio.timeout(1.0) as handler_timeout:  # as the dispatcher runs a handler
        deadline.current.set(handler_timeout)
        result = await create_media({"file": {"path": "clip.mp4"}}, make_ctx(client))
    assert result["size_bytes"] == 4 * MIB


async def test_upload_past_its_budget_times_out(
    sim: PeerlySimulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The budget still ends: 1 s + 1 MiB at 1 MiB/s is 2 s, and Peerly taking 4 s is vendor_timeout."""
    with (tmp_path / "clip.mp4").open("wb") as handle:
        handle.truncate(1 * MIB)
    client = make_client(timeout=1.0, upload_dir=str(tmp_path), upload_min_bytes_per_second=MIB)
    sim.add_fault(Fault(kind="slow", delay=4.0, path_prefix="/api/v2/media"))
    with pytest.raises(VendorUnavailable) as caught:
        await create_media({"file": {"path": "clip.mp4"}}, make_ctx(client))
    assert caught.value.code == "vendor_timeout"
