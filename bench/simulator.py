"""A fast Pidj simulator for the benchmark: ``POST /api/2020/send`` answered after a fixed latency.

It only has to be cheaper than what it measures, so the default implementation
is a bare asyncio protocol that parses just enough HTTP/1.1 (request line,
Content-Length, Authorization, keep-alive) and answers with a canned body;
``--impl aiohttp`` runs the same routes on aiohttp's server to compare the two.
The latency is a timer (``call_later``), never a blocking sleep.

Routes: ``POST /api/2020/send`` and ``GET|POST /api/2020/authorization-check``
(Basic auth: account key / token), and ``GET /stats`` (no auth) with the
number of texts accepted, for checking who called the vendor.

Run alone: ``python -m bench.simulator --latency-ms 50`` prints ``READY <port>``
on stdout and serves until SIGTERM or ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aiohttp import web

Impl = Literal["raw", "aiohttp"]
PREFIX = "/api/2020"
SENT = orjson.dumps({"code": 200, "status": "success", "message": "Text sent."})
AUTHORIZED = orjson.dumps({"code": 200, "status": "success", "message": "Authorization successful."})
UNAUTHORIZED = orjson.dumps({"code": 401, "status": "error", "message": "Unauthorized."})
NOT_FOUND = orjson.dumps({"code": 404, "status": "error", "message": "Not found."})
_REASONS = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found", 411: b"Length Required"}
_MAX_HEAD = 64 * 1024


@dataclass
class Counters:
    """What the simulator has answered since it started."""

    sent: int = 0
    repeated: int = 0  # texts whose form body was already sent once: the same command sent twice
    unauthorized: int = 0
    other: int = 0
    bodies: set[bytes] = field(default_factory=set, repr=False)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "sent": self.sent,
                "repeated": self.repeated,
                "unauthorized": self.unauthorized,
                "other": self.other,
            }
        )


@dataclass
class Config:
    latency: float  # seconds
    account_key: str
    token: str
    counters: Counters = field(default_factory=Counters)

    @property
    def authorization(self) -> str:
        raw = f"{self.account_key}:{self.token}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def route(
        self, method: str, path: str, authorization: str | None, body: bytes = b""
    ) -> tuple[int, bytes, bool]:
        """(status, body, delayed) for one request; ``delayed`` answers wait for the latency.

        The bench puts the command id in each text, so a body seen twice is a command sent twice.
        """
        path = path.split("?", 1)[0]
        if path == "/stats" and method == "GET":
            return 200, self.counters.as_json(), False
        if path not in (f"{PREFIX}/send", f"{PREFIX}/authorization-check"):
            self.counters.other += 1
            return 404, NOT_FOUND, False
        if authorization != self.authorization:
            self.counters.unauthorized += 1
            return 401, UNAUTHORIZED, False
        if path == f"{PREFIX}/send" and method == "POST":
            self.counters.sent += 1
            if body in self.counters.bodies:
                self.counters.repeated += 1
            else:
                self.counters.bodies.add(body)
            return 200, SENT, True
        if path == f"{PREFIX}/authorization-check" and method in ("GET", "POST"):
            return 200, AUTHORIZED, False
        self.counters.other += 1
        return 404, NOT_FOUND, False


def _response(status: int, body: bytes, close: bool = False) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        status,
        _REASONS.get(status, b"Unknown"),
        len(body),
        b"Connection: close\r\n" if close else b"",
    )
    return head + body


class _Request:
    __slots__ = ("authorization", "body_length", "close", "method", "path")

    def __init__(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, path, *_ = lines[0].decode("latin-1").split(" ")
        self.method, self.path = method, path
        self.authorization: str | None = None
        self.body_length = 0
        self.close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self.body_length = int(value)
            elif name == b"authorization":
                self.authorization = value.strip().decode("latin-1")
            elif name == b"connection":
                self.close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                self.body_length = -1  # chunked bodies are not supported: answer 411


class _Protocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive; answers leave in request order even when they are delayed."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.buffer = bytearray()
        self.pending: deque[list[bytes | None]] = deque()  # one slot per request, filled when answered
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.closing:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._abort()
                return
            try:
                request = _Request(bytes(self.buffer[:end]))
            except (ValueError, UnicodeDecodeError):
                self._abort()
                return
            if request.body_length < 0:
                self._answer(self._slot(), _response(411, b"", close=True), close=True)
                return
            total = end + 4 + request.body_length
            if len(self.buffer) < total:
                return
            self._dispatch(request, bytes(self.buffer[end + 4 : total]))
            del self.buffer[:total]

    def _dispatch(self, request: _Request, content: bytes) -> None:
        status, body, delayed = self.config.route(
            request.method, request.path, request.authorization, content
        )
        slot = self._slot()
        payload = _response(status, body, close=request.close)
        if delayed and self.config.latency > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(self.config.latency, self._answer, slot, payload, request.close)
        else:
            self._answer(slot, payload, request.close)

    def _slot(self) -> list[bytes | None]:
        slot: list[bytes | None] = [None, None]
        self.pending.append(slot)
        return slot

    def _answer(self, slot: list[bytes | None], payload: bytes, close: bool) -> None:
        slot[0] = payload
        slot[1] = b"close" if close else b""
        while self.pending and self.pending[0][0] is not None:
            ready, closing = self.pending.popleft()
            if self.transport is None:
                continue
            assert ready is not None
            self.transport.write(ready)
            if closing:
                self.closing = True
                self.transport.close()

    def _abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def _aiohttp_app(config: Config) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        content = await request.read() if request.method == "POST" else b""
        status, body, delayed = config.route(
            request.method, request.path, request.headers.get("Authorization"), content
        )
        if delayed and config.latency > 0:
            await asyncio.sleep(config.latency)
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@dataclass
class RunningSimulator:
    """A simulator serving on ``127.0.0.1:port`` in the current event loop."""

    port: int
    config: Config
    _close: list[object]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    @property
    def counters(self) -> Counters:
        return self.config.counters

    async def close(self) -> None:
        for item in self._close:
            if isinstance(item, asyncio.Server):
                item.close()
                await item.wait_closed()
            elif isinstance(item, web.AppRunner):
                await item.cleanup()


async def start_simulator(
    *,
    latency_ms: float = 0.0,
    account_key: str = "bench-key",
    token: str = "bench-token",
    port: int = 0,
    impl: Impl = "raw",
) -> RunningSimulator:
    """Serve the simulator on loopback; ``port=0`` picks a free port."""
    config = Config(latency=latency_ms / 1000, account_key=account_key, token=token)
    if impl == "raw":
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Protocol(config), "127.0.0.1", port, backlog=1024)
        bound = server.sockets[0].getsockname()[1]
        return RunningSimulator(port=bound, config=config, _close=[server])
    runner = web.AppRunner(_aiohttp_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    assert site._server is not None and isinstance(site._server, asyncio.Server)
    bound = site._server.sockets[0].getsockname()[1]
    return RunningSimulator(port=bound, config=config, _close=[runner])


async def _serve(args: argparse.Namespace) -> None:
    simulator = await start_simulator(
        latency_ms=args.latency_ms,
        account_key=args.account_key,
        token=args.token,
        port=args.port,
        impl=args.impl,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"READY {simulator.port}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    await simulator.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--account-key", default="bench-key")
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--impl", choices=["raw", "aiohttp"], default="raw")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop by itself after this long")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
