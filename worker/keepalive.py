"""Keep-alive HTTP/1.1 connections to one vendor origin, for requests whose body is bytes.

aiohttp spends about 390k instructions on a small request and its answer (a request and a
response object, header merging, a task that writes the body, a timer: measured under
callgrind against the same loopback server), a third of all the worker does for a text.
A vendor call here is one write of the request and httptools (llhttp, the parser of
uvicorn and Node.js) reading the answer: about a quarter of that. aiohttp still carries
what this does not: multipart uploads, file downloads, HEAD, and every request when
``SWITCHBOARD_VENDOR_HTTP_CLIENT=aiohttp``.

What a failure means for the vendor call, as :mod:`worker.vendor_http` maps it:

- :class:`ConnectFailed`: no connection was made; nothing was sent.
- :class:`ResponseLost`: the request went out (or may have), and no whole answer came back.
- :class:`NotSent`: the time ran out before the request was written.
- :class:`AnswerTimedOut`: it was written, and the answer did not arrive in time.

A connection idle longer than ``idle_seconds`` is closed rather than reused: a server
that closes idle connections first would otherwise see a request arrive on a closing
connection, and a request lost that way may or may not have been acted on.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from worker import __version__
from worker.deadline import Deadlines, tick_for

USER_AGENT = f"switchboard/{__version__}"
IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
"""Methods HTTP defines as safe to repeat (RFC 9110 9.2.2), of those sent here."""
IDLE_SECONDS = 10.0
"""Below the idle timeouts servers commonly use (nginx 75 s, AWS ALB 60 s, many APIs 15-30 s)."""


class ConnectFailed(ConnectionError):
    """No connection to the vendor (refused, unresolvable, TLS refused): the request was not sent."""


class ResponseLost(ConnectionError):
    """The request was sent, or may have been, and no complete answer arrived."""


class NotSent(TimeoutError):
    """The time ran out while connecting or waiting for a free connection: nothing was sent."""


class AnswerTimedOut(TimeoutError):
    """The request went out and its answer did not arrive in time."""


class Answer(NamedTuple):
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection: at most one request on it at a time, its answer read by httptools."""

    def __init__(self, pool: KeepAlivePool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.idle_since = 0.0
        self.closed = False
        self.reused = False
        """Taken from the idle connections for the request now on it (not opened for it)."""
        self.heard = False
        """Any byte of an answer arrived for the request now on it."""
        self._reset()

    def _reset(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._sized = False  # Content-Length or chunked: the answer ends by itself, not at close

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: a server talking out of turn is not to be trusted
            self.close()
            return
        self.heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseLost(f"invalid HTTP answer ({exc.__class__.__name__})"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.waiter is None or self.waiter.done():
            return
        if self._headers_done and not self._sized:
            self._complete()  # an answer delimited by the connection's close (HTTP/1.0 style)
        else:
            self._fail(ResponseLost("connection closed before the whole answer arrived"))

    # -- httptools callbacks ---------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or lowered == b"transfer-encoding":
            self._sized = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # 100 Continue and the like: the answer follows
            self._reset()
            return
        self._complete()

    # -- the request's side ----------------------------------------------------
    def _complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in self._headers
        )
        body = b"".join(self._body)
        encoding = headers.get("Content-Encoding", "").strip().lower()
        keep = not self.closed and self.parser.should_keep_alive()
        self._reset()
        if encoding in ("gzip", "deflate"):
            try:
                body = zlib.decompress(body, 47)  # 47: gzip or zlib, told by the header
            except zlib.error:
                keep = False
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ResponseLost(f"answer not valid {encoding}"))
                self.close()
                return
        if not keep:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self.parser.get_status_code(), CIMultiDictProxy(headers), body))

    def _fail(self, error: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class KeepAlivePool:
    """Connections to one origin (``http(s)://host:port``), reused while they stay open and fresh.

    At most ``limit`` connections at once; a request beyond them waits for one to come back.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        limit: int = 512,
        idle_seconds: float = IDLE_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":  # the system's certificates, host names checked, as aiohttp's default
            self.ssl = ssl_context or ssl.create_default_context()
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_line = f"Host: {host if default_port else f'{host}:{self.port}'}\r\n"
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False
        # Not a timer a request (asyncio.timeout): one sweep a tick while requests run.
        self._deadlines = Deadlines(tick_for(timeout))

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None, seconds: float
    ) -> Answer:
        """Send one request and read its whole answer within ``seconds``.

        ``target`` is the path and query, already encoded. Raises :class:`ConnectFailed`,
        :class:`NotSent` (out of time before the request went out), :class:`AnswerTimedOut`
        or :class:`ResponseLost`.
        """
        head = self._head(method, target, headers, body)
        message = head + body if body else head
        sent = False
        try:
            async with self._deadlines(seconds):
                connection = await self._take()
                sent = True
                try:
                    return await self._exchange(connection, message)
                except ResponseLost:
                    # A reused connection the server closed as this request went out (its idle
                    # timeout) answers nothing: an idempotent request goes once more on a new
                    # one, as aiohttp retries it. Anything else is the caller's to judge.
                    if not (connection.reused and not connection.heard and method in IDEMPOTENT):
                        raise
                sent = False
                connection = await self._take(fresh=True)
                sent = True
                return await self._exchange(connection, message)
        except TimeoutError as exc:
            if sent:
                raise AnswerTimedOut(f"no answer within {seconds}s") from exc
            raise NotSent(f"no connection within {seconds}s") from exc

    async def _exchange(self, connection: _Connection, message: bytes) -> Answer:
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        connection.waiter = waiter
        connection.heard = False
        assert connection.transport is not None
        try:
            connection.transport.write(message)
            answer = await waiter
        except BaseException:
            connection.close()  # an answer left half read cannot be reused
            self._give_back(connection)
            raise
        self._give_back(connection)
        return answer

    def _head(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_line]
        for name, value in headers.items():
            line = f"{name}: {value}\r\n"
            if "\n" in line[:-1] or "\r" in line[:-2]:
                raise ValueError(f"header {name!r}: a line break in a header would split the request")
            lines.append(line)
        if "User-Agent" not in headers:
            lines.append(f"User-Agent: {USER_AGENT}\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body) if body else 0}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _take(self, *, fresh: bool = False) -> _Connection:
        idle = self._idle
        now = time.monotonic()
        while idle and not fresh:
            connection = idle.pop()  # the most recently used: the likeliest to be open
            if connection.closed or now - connection.idle_since > self.idle_seconds:
                connection.close()
                continue
            connection.reused = True
            return connection
        while self._open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and self._waiting:
                    self._wake()  # pass on the turn this waiter was given
                raise
            if idle and not fresh:
                return await self._take()
        self._open += 1
        try:
            _, protocol = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            )
        except BaseException as exc:
            self._open -= 1
            self._wake()
            if isinstance(exc, OSError):  # refused, unreachable, unresolvable, TLS refused
                raise ConnectFailed(f"cannot connect ({exc.__class__.__name__})") from exc
            raise
        assert isinstance(protocol, _Connection)
        protocol.reused = False
        return protocol

    def _give_back(self, connection: _Connection) -> None:
        if connection.closed or self._closed:
            connection.close()
        else:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        self._wake()

    def _forget(self, connection: _Connection) -> None:
        """A connection closed (either side): it no longer counts against the limit."""
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every connection; requests still running end :class:`ResponseLost`."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
