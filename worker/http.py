"""The worker's HTTP listeners: /metrics, /healthz, /readyz, and inbound webhooks.

Anyone who can reach a port can hold its connections open, so every
listener defends itself (:class:`Limits`):

- a connection cap: past ``max_connections`` (and never more than a quarter of
  the process's file-descriptor limit) a new connection is closed at once, so a
  flood cannot take every file descriptor of the process;
- an idle timeout: a connection that sends nothing (before its first request
  or between keep-alive requests) is closed;
- a header timeout: once a request starts, its line and headers must arrive
  in full within it (the "one header line every 10 s" slow client);
- a read timeout: once the app has a request, its body must arrive in full
  within it, or the client gets 408 and the connection is closed (checked at
  the connection, so handlers that stream the body keep doing so).

Webhooks can be served on a listener of their own (``SWITCHBOARD_WEBHOOK_PORT``):
then a flood of webhook clients fills only that listener's cap, and the probes
and ``/metrics`` keep answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import StreamReader, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

MAX_BODY_BYTES = 1024 * 1024
_TIMEOUT_TEXT = b"request body not received in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_TEXT), _TIMEOUT_TEXT)
)
"""Written straight to the transport: the handler may still be waiting on the body."""
ACCEPT_BACKLOG = 32
"""Also how many connections asyncio accepts in one go: a small burst cannot run the
process out of descriptors before the cap closes the extra ones (asyncio then stops
accepting on *every* listener for a second)."""


def descriptor_budget() -> int:
    """Connections one listener may hold: a quarter of RLIMIT_NOFILE, so two listeners
    under flood still leave half the descriptors to the broker, the store and vendors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1 << 20
    return max(8, soft // 4)


@dataclass(frozen=True)
class Limits:
    header_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 15.0
    idle_timeout_seconds: float = 30.0
    max_connections: int = 256


class _Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection and closes it when a deadline passes.

    States: ``idle`` (waiting for a request's first byte: idle timeout), ``head``
    (a request started: header timeout), ``busy`` (aiohttp parsed the head and
    the app has it: no deadline here, the read timeout and handlers bound it).
    """

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.state = "idle"
        self.timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.listener.connections) >= self.listener.max_connections:
            self.listener.refused += 1
            transport.abort()
            return
        self.listener.connections[transport] = self
        self.inner = self.listener.protocol_factory()
        self.inner.connection_made(transport)
        self._arm(self.listener.limits.idle_timeout_seconds)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.state == "idle":
            self.state = "head"
            self._arm(self.listener.limits.header_timeout_seconds)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        if self.transport is not None:
            self.listener.connections.pop(self.transport, None)
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None

    def request_started(self, body: StreamReader | None) -> None:
        self.state = "busy"
        self._disarm()
        if body is not None and not body.is_eof():
            self.body_timer = asyncio.get_running_loop().call_later(
                self.listener.limits.read_timeout_seconds, self._body_expired, body
            )

    def request_done(self) -> None:
        self._disarm_body()
        self.state = "idle"
        self._arm(self.listener.limits.idle_timeout_seconds)

    def _disarm_body(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _body_expired(self, body: StreamReader) -> None:
        self.body_timer = None
        if self.transport is None or body.is_eof() or self.transport.is_closing():
            return
        self.listener.timed_out += 1
        self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.transport is not None and self.state != "busy":
            # abort, not close: a slow client may not read what close would flush.
            self.listener.timed_out += 1
            self.transport.abort()


@dataclass
class Listener:
    """One listening socket with its limits; ``cleanup()`` closes it and its connections."""

    runner: web.AppRunner
    limits: Limits
    connections: dict[asyncio.Transport, _Connection] = field(default_factory=dict)
    refused: int = 0
    timed_out: int = 0
    server: asyncio.Server | None = None
    max_connections: int = 0

    def __post_init__(self) -> None:
        self.max_connections = min(self.limits.max_connections, descriptor_budget())

    def protocol_factory(self) -> asyncio.Protocol:
        server = self.runner.server
        assert server is not None
        protocol: asyncio.Protocol = server()
        return protocol

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def cleanup(self) -> None:
        if self.server is not None:
            self.server.close()
        await self.runner.cleanup()
        for transport in list(self.connections):
            transport.abort()


@dataclass
class _Served:
    """What an app's middleware needs to know of the listener serving it."""

    limits: Limits
    listener: Listener | None = None


_SERVED = web.AppKey("switchboard_served", _Served)


def _guard(served: _Served) -> Any:
    """Middleware: tells the connection a request is in the app (and when it is done)."""

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        listener = served.listener
        connection = (
            listener.connections.get(request.transport)
            if listener is not None and request.transport is not None
            else None
        )
        if connection is not None:
            connection.request_started(request.content if request.body_exists else None)
        try:
            return await handler(request)
        finally:
            if connection is not None:
                connection.request_done()

    return guard


def _new_app(limits: Limits) -> web.Application:
    served = _Served(limits)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_guard(served)])
    app[_SERVED] = served
    return app


def build_webhook_app(
    webhook_apps: dict[str, web.Application], limits: Limits | None = None
) -> web.Application:
    """Webhooks alone, for their own listener: ``/webhooks/<vendor>/...`` as on the metrics port."""
    app = _new_app(limits or Limits())
    for vendor, sub_app in webhook_apps.items():
        app.add_subapp(f"/webhooks/{vendor}/", sub_app)
    return app


def build_app(
    ready: Callable[[], bool],
    webhook_apps: dict[str, web.Application] | None = None,
    limits: Limits | None = None,
) -> web.Application:
    app = _new_app(limits or Limits())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for vendor, sub_app in (webhook_apps or {}).items():
        app.add_subapp(f"/webhooks/{vendor}/", sub_app)
    return app


async def serve(app: web.Application, host: str, port: int) -> Listener:
    """Listen on ``host:port`` with the limits the app was built with."""
    served = app[_SERVED]
    limits = served.limits
    # aiohttp's own keep-alive timer agrees with ours; ours also covers slow heads.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=limits.idle_timeout_seconds
    )
    await runner.setup()
    listener = Listener(runner, limits)
    served.listener = listener
    try:
        listener.server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(listener), host, port, reuse_address=True, backlog=ACCEPT_BACKLOG
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    return listener
