"""Issue 14 item 4: slow HTTP clients cannot hold the worker's connections or starve its probes."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from handlers.pidj.sandbox import PidjSimulator
from tests.runtime.conftest import pidj_env
from tests.support.worker import SWITCHBOARD, WorkerProcess, free_port
from worker.http import Limits, Listener, build_app, build_webhook_app, serve

SLOW_CLIENTS = 300
WORKER_FILE_LIMIT = 256
"""The worker gets fewer descriptors than there are slow clients, as a pod's ulimit would do."""


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def _stream(request: web.Request) -> web.Response:
    """Reads the body in chunks, as the Pidj webhook handler does."""
    chunks = []
    while chunk := await request.content.read(4):
        chunks.append(chunk)
    return web.Response(body=b"".join(chunks))


def _webhooks() -> dict[str, web.Application]:
    app = web.Application()
    app.router.add_post("/stream/{account}", _stream)
    app.router.add_post("/{account}", _echo)
    return {"test": app}


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    limits = Limits(
        # Idle longer than the header timeout, as by default: aiohttp's keep-alive timer (the idle
        # timeout) also closes a connection whose head never ends, and must not win that race.
        header_timeout_seconds=0.5,
        read_timeout_seconds=0.5,
        idle_timeout_seconds=1.5,
        max_connections=5,
    )
    served = await serve(build_webhook_app(_webhooks(), limits), "127.0.0.1", 0)
    yield served
    await served.cleanup()


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True once the server closes the connection (EOF or reset) within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                if not await reader.read(4096):
                    return True
    except TimeoutError:  # before OSError: TimeoutError is one
        return False
    except (ConnectionError, OSError):
        return True


async def test_a_head_sent_one_line_at_a_time_is_cut_off(listener: Listener) -> None:
    """A client trickling header lines is disconnected once the header timeout passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"POST /webhooks/test/a HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        for n in range(50):
            await asyncio.sleep(0.1)
            writer.write(b"X-Slow-%d: 1\r\n" % n)

    trickling = asyncio.create_task(trickle())
    try:
        assert await _closed_by_server(reader, within=4.0)
    finally:
        trickling.cancel()
        writer.close()
    assert listener.timed_out >= 1


async def test_a_connection_that_sends_nothing_is_closed(listener: Listener) -> None:
    """A connection idle past the idle timeout is closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        assert await _closed_by_server(reader, within=4.0)
    finally:
        writer.close()


async def test_a_body_that_does_not_arrive_is_answered_408(listener: Listener) -> None:
    """A request whose body stalls past the read timeout gets 408, not a handler waiting forever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"POST /webhooks/test/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    try:
        async with asyncio.timeout(4.0):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert status_line.split()[1] == b"408"


async def test_a_handler_streaming_the_body_gets_all_of_it(listener: Listener) -> None:
    """The read timeout leaves the body to the handler: one that streams it reads every byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"POST /webhooks/test/stream/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
    try:
        async with asyncio.timeout(2.0):
            response = await reader.readuntil(b"0123456789")
    finally:
        writer.close()
    assert response.split()[1] == b"200"


async def test_connections_over_the_cap_are_refused(listener: Listener) -> None:
    """Past max_connections a new connection is closed at once, while the ones inside still work."""
    held = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(5)]
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        assert await _closed_by_server(extra_reader, within=0.4)
        reader, writer = held[0]
        writer.write(b"POST /webhooks/test/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        async with asyncio.timeout(2.0):
            assert (await reader.readline()).split()[1] == b"200"
    finally:
        extra_writer.close()
        for _, writer in held:
            writer.close()
    assert listener.refused >= 1


async def test_probes_and_webhooks_listen_apart() -> None:
    """With its own listener, the webhook path is served there and not on the probe port."""
    probes = await serve(build_app(lambda: True), "127.0.0.1", 0)
    hooks = await serve(build_webhook_app(_webhooks()), "127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()

        def post(port: int) -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/test/a", data=b"x")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await loop.run_in_executor(None, post, hooks.port) == 200
        assert await loop.run_in_executor(None, post, probes.port) == 404
    finally:
        await hooks.cleanup()
        await probes.cleanup()


class _LimitedWorker(WorkerProcess):
    """A worker process with RLIMIT_NOFILE lowered, like a pod with a small ulimit."""

    def start(self) -> WorkerProcess:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (WORKER_FILE_LIMIT, WORKER_FILE_LIMIT))

        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(SWITCHBOARD), "run"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
        )
        self.wait_until_ready()
        return self


@pytest.fixture
def flooded_worker(broker: None) -> Iterator[tuple[WorkerProcess, int]]:
    simulator = PidjSimulator()
    webhook_port = free_port()
    with simulator.running_in_thread():
        env = pidj_env(simulator)
        env.update(
            {
                "SWITCHBOARD_WEBHOOKS": "true",
                "SWITCHBOARD_WEBHOOK_PORT": str(webhook_port),
                "SWITCHBOARD_PIDJ_WEBHOOK_SECRET": "a-webhook-secret-for-the-security-tests",
                "SWITCHBOARD_HTTP_MAX_CONNECTIONS": "100",
            }
        )
        with _LimitedWorker(env) as worker:
            yield worker, webhook_port


def _healthz_seconds(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        assert response.status == 200
    return time.monotonic() - started


def test_healthz_answers_within_1s_during_a_flood_of_slow_webhook_clients(
    flooded_worker: tuple[WorkerProcess, int],
) -> None:
    """300 slow webhook sockets against a worker with 256 descriptors: /healthz still answers within 1 s."""
    worker, webhook_port = flooded_worker
    sockets: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", webhook_port), timeout=5)
            sock.sendall(b"POST /webhooks/pidj/default HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        # Still trickling: one more header line on every socket, then the probes.
        for sock in sockets:
            # A socket refused by the connection cap is closed: that is the defence.
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Slow: 1\r\n")
        answers = [_healthz_seconds(worker.url) for _ in range(5)]
        assert max(answers) < 1.0, answers
        assert worker.get("/readyz")[0] == 200
        assert "switchboard_build_info" in worker.metrics()
    finally:
        for sock in sockets:
            sock.close()
