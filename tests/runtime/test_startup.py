"""Start-up owns what it opens: a failure half way closes everything opened before it (issue 16, item 7)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from handlers import VENDORS
from tests.store.conftest import POSTGRES_URL, REDIS_URL, ensure_postgres_database
from tests.support.worker import free_port
from worker.config import Settings
from worker.registry import Registry, Sandbox
from worker.runtime import Runtime
from worker.store import open_stores


def _recording_registry(started: list[str]) -> Registry:
    """Every vendor, each sandbox's URL noted as it starts (so the test can check it stopped)."""

    def recorded(start: Callable[[], Awaitable[Sandbox]]) -> Callable[[], Awaitable[Sandbox]]:
        async def start_and_note() -> Sandbox:
            sandbox = await start()
            started.append(str(sandbox.account["base_url"]))
            return sandbox

        return start_and_note

    return Registry(
        dataclasses.replace(vendor, start_sandbox=recorded(vendor.start_sandbox))
        for vendor in VENDORS
        if vendor.start_sandbox is not None
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@contextlib.asynccontextmanager
async def signals_restored() -> AsyncIterator[None]:
    """Runtime.run installs SIGTERM/SIGINT handlers on the loop; take them off again."""
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _refused(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) != 0


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _store_url(backend: str, name: str) -> str:
    """A store URL whose connections carry ``name``, so the test can count them on the server."""
    if backend == "redis":
        return f"{REDIS_URL}?client_name={name}"
    await ensure_postgres_database()
    return f"{POSTGRES_URL}?application_name={name}"


async def _open_connections(backend: str, name: str) -> int:
    if backend == "redis":
        admin = aioredis.Redis.from_url(REDIS_URL)
        try:
            clients = await admin.client_list()
        finally:
            await admin.aclose()
        return sum(1 for client in clients if client.get("name") == name)
    admin_pg = await asyncpg.connect(POSTGRES_URL)
    try:
        count: int = await admin_pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
        )
    finally:
        await admin_pg.close()
    return count


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis", marks=pytest.mark.integration),
        pytest.param("postgres", id="postgres", marks=pytest.mark.integration),
    ],
)
async def test_failed_start_up_closes_what_it_opened(
    backend: str, busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook port in use: the run fails, and the sandboxes, probes listener, store pool and tasks
    opened before are all closed."""
    for variable in [k for k in os.environ if k.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(variable)
    name = f"sb-startup-{uuid.uuid4().hex[:8]}"
    store_url = (
        f"sqlite:///{tmp_path}/store.sqlite3" if backend == "sqlite" else await _store_url(backend, name)
    )
    metrics_port = free_port()
    settings = Settings(
        store_url=store_url,
        sandbox=True,
        webhooks=True,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
        webhook_port=busy_port,
        rate_limit_per_second=5,
    )
    started: list[str] = []
    runtime = Runtime(settings, _recording_registry(started))
    async with signals_restored():
        with pytest.raises(OSError):
            await runtime.run()

    assert len(started) == 2, "both sandboxes started before the failing step"
    assert all(_refused(url) for url in started), f"a sandbox still listens: {started}"
    assert _bindable(metrics_port), "the probes listener opened before the failure is still open"
    assert asyncio.all_tasks() == {asyncio.current_task()}, "a background task outlived the failed start"
    if backend != "sqlite":
        assert await _open_connections(backend, name) == 0, f"{backend} connections left open"


@pytest.mark.integration
async def test_one_redis_pool_for_store_and_rate_limits() -> None:
    """On a Redis store without a separate SWITCHBOARD_REDIS_URL, the rate limits use the store's client."""
    stores = await open_stores(REDIS_URL, retention_seconds=60)
    try:
        runtime = Runtime(Settings(store_url=REDIS_URL), Registry())
        async with contextlib.AsyncExitStack() as stack:
            assert runtime._shared_redis(stores, stack) is stores.redis
        elsewhere = Runtime(
            Settings(store_url=REDIS_URL, redis_url=REDIS_URL.rsplit("/", 1)[0] + "/14"), Registry()
        )
        async with contextlib.AsyncExitStack() as stack:
            own = elsewhere._shared_redis(stores, stack)
            assert own is not None and own is not stores.redis
            assert await own.ping()
    finally:
        await stores.close()
