"""Issue 14 item 1: files are streamed, and a worker holds a bounded number of file bytes.

``create_media`` and ``upload_list`` used to read each file whole (a URL once
more): six 100 MiB files took a worker past its 512 MiB limit.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from handlers.peerly.client import PeerlyClient
from handlers.peerly.files import STREAM_HOLD_BYTES
from handlers.peerly.media import create_media
from handlers.peerly.settings import PeerlyAccount
from tests.peerly.conftest import make_ctx
from worker import deadline, file_budget
from worker.vendor_http import VendorHTTP

MIB = 1024 * 1024

SERVE = "import asyncio; from handlers.peerly.sandbox import serve; asyncio.run(serve())"


@pytest.fixture(scope="module")
def sandbox_account() -> Iterator[dict[str, Any]]:
    """The Peerly simulator in a process of its own, so that its memory is not the test's."""
    process = subprocess.Popen([sys.executable, "-c", SERVE], stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line, "the simulator did not start"
        yield orjson.loads(line)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def client(sandbox_account: dict[str, Any], tmp_path: Path) -> AsyncIterator[PeerlyClient]:
    async with aiohttp.ClientSession() as session:
        account = PeerlyAccount.model_validate({**sandbox_account, "upload_dir": str(tmp_path)})
        yield PeerlyClient(account, VendorHTTP("peerly", session, account.base_url, timeout=30))


def _video(directory: Path, name: str, size: int) -> None:
    with (directory / name).open("wb") as handle:
        handle.truncate(size)


async def test_a_large_file_is_streamed_not_held(client: PeerlyClient, tmp_path: Path) -> None:
    """Uploading a 48 MiB file allocates under 8 MiB in the worker: it is never read whole."""
    _video(tmp_path, "rally.mp4", 48 * MIB)
    await create_media({"file": {"path": "rally.mp4"}}, make_ctx(client))  # login, connection
    tracemalloc.start()
    try:
        result = await create_media({"title": "Rally", "file": {"path": "rally.mp4"}}, make_ctx(client))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["size_bytes"] == 48 * MIB
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB"


async def test_commands_over_the_budget_wait_and_all_succeed(client: PeerlyClient, tmp_path: Path) -> None:
    """With room for one streamed file, four concurrent uploads run one at a time and all succeed."""
    for index in range(4):
        _video(tmp_path, f"clip{index}.mp4", 2 * MIB)
    saved = file_budget.budget
    file_budget.budget = file_budget.ByteBudget(STREAM_HOLD_BYTES)
    try:
        results = await asyncio.gather(
            *(create_media({"file": {"path": f"clip{i}.mp4"}}, make_ctx(client)) for i in range(4))
        )
        assert file_budget.budget.peak == STREAM_HOLD_BYTES and file_budget.budget.in_use == 0
    finally:
        file_budget.budget = saved
    assert [r["size_bytes"] for r in results] == [2 * MIB] * 4


async def test_waiting_for_the_budget_does_not_use_up_the_handler_deadline() -> None:
    """A command queued behind the budget for longer than its handler timeout still runs (clock paused)."""
    budget = file_budget.ByteBudget(10)
    release = asyncio.Event()

    async def holder() -> None:
        async with budget.hold(10):
            await release.wait()

    async def waiter() -> str:
        async with asyncio.timeout(0.2) as timeout:
            deadline.current.set(timeout)
            async with budget.hold(10):
                return "ran"

    first = asyncio.create_task(holder())
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # both run to their first wait
    assert budget.waiting == 1
    done, _ = await asyncio.wait({second}, timeout=0.4)  # twice the waiter's handler timeout
    assert not done, "the waiter failed instead of waiting"
    release.set()
    assert await asyncio.wait_for(second, 5) == "ran"
    await first
