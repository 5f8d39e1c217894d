"""worker.keepalive against a real loopback server: reuse, framing, and what each failure means."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.support.wire import read_request, self_signed_certificate
from worker import __version__
from worker.errors import VendorUnavailable
from worker.keepalive import AnswerTimedOut, ConnectFailed, KeepAlivePool, NotSent, ResponseLost
from worker.vendor_http import VendorHTTP

OK = b'{"status":"success"}'


def answer(body: bytes = OK, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Server:
    """Reads each request whole (head and Content-Length body), records it, and answers with ``reply``."""

    reply: Callable[[bytes, asyncio.StreamWriter], bytes | None]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await read_request(reader)
                self.requests.append(request)
                out = self.reply(request, writer)
                if out is None:
                    continue  # the test's reply wrote, closed or stays silent itself
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Reply = Callable[[bytes, asyncio.StreamWriter], bytes | None]
Start = Callable[[Reply], Awaitable[Server]]


@pytest.fixture
async def server() -> AsyncIterator[Start]:
    started: list[asyncio.Server] = []

    async def start(reply: Reply) -> Server:
        state = Server(reply)
        srv = await asyncio.start_server(state.serve, "127.0.0.1", 0)
        state.port = srv.sockets[0].getsockname()[1]
        started.append(srv)
        return state

    yield start
    for srv in started:
        srv.close()


async def test_one_connection_carries_successive_requests(server: Start) -> None:
    srv = await server(lambda request, writer: answer())
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}/api", timeout=5)
    for _ in range(3):
        got = await pool.request("POST", "/api/send", {"Authorization": "Bearer t"}, b"a=1", 5)
        assert (got.status, got.body, got.headers["content-type"]) == (200, OK, "application/json")
    assert srv.connections == 1
    first = srv.requests[0].decode()
    assert first.startswith("POST /api/send HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{srv.port}\r\n" in first and "Authorization: Bearer t\r\n" in first
    assert "Content-Length: 3\r\n" in first and first.endswith("\r\n\r\na=1")
    assert f"User-Agent: switchboard/{__version__}\r\n" in first
    await pool.close()


async def test_get_has_no_body_and_post_without_one_says_zero(server: Start) -> None:
    srv = await server(lambda request, writer: answer())
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    await pool.request("GET", "/x?a=b", {}, None, 5)
    await pool.request("POST", "/y", {}, None, 5)
    assert "Content-Length" not in srv.requests[0].decode()
    assert srv.requests[0].startswith(b"GET /x?a=b HTTP/1.1\r\n")
    assert "Content-Length: 0\r\n" in srv.requests[1].decode()
    await pool.close()


async def test_chunked_and_gzip_answers_are_read_whole(server: Start) -> None:
    packed = gzip.compress(OK)
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (packed[:7], packed[7:]))
        + b"0\r\n\r\n"
    )
    srv = await server(lambda request, writer: chunked)
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    for _ in range(2):
        assert (await pool.request("GET", "/", {}, None, 5)).body == OK
    assert srv.connections == 1
    await pool.close()


async def test_connection_close_and_close_delimited_answers(server: Start) -> None:
    def reply(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK)  # no length: ends at close
        writer.close()

    srv = await server(reply)
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    for _ in range(2):
        assert (await pool.request("GET", "/", {}, None, 5)).body == OK
    assert srv.connections == 2  # not reused after Connection: close
    await pool.close()


async def test_interim_answers_are_skipped(server: Start) -> None:
    srv = await server(
        lambda request, writer: b"HTTP/1.1 100 Continue\r\n\r\n" + answer(status="201 Created")
    )
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    assert (await pool.request("POST", "/", {}, b"x", 5)).status == 201
    await pool.close()


async def test_dropped_after_the_request_is_lost_not_retried(server: Start) -> None:
    def drop(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    srv = await server(drop)
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    with pytest.raises(ResponseLost):
        await pool.request("POST", "/", {}, b"x", 5)
    assert len(srv.requests) == 1  # sent once: a lost answer is the caller's to judge
    await pool.close()


def _drop_second_request() -> Reply:
    """Answers the first request; aborts the connection on the second, as a server closing it idle."""
    seen = 0

    def reply(request: bytes, writer: asyncio.StreamWriter) -> bytes | None:
        nonlocal seen
        seen += 1
        if seen == 2:
            writer.transport.abort()
            return None
        return answer()

    return reply


async def test_an_idempotent_request_on_a_stale_connection_goes_once_more(server: Start) -> None:
    srv = await server(_drop_second_request())
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    await pool.request("GET", "/", {}, None, 5)
    assert (await pool.request("PUT", "/thing", {}, b"x", 5)).status == 200
    assert (srv.connections, len(srv.requests)) == (2, 3)
    await pool.close()


async def test_a_post_on_a_stale_connection_is_not_repeated(server: Start) -> None:
    srv = await server(_drop_second_request())
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    await pool.request("POST", "/send", {}, b"x", 5)
    with pytest.raises(ResponseLost):
        await pool.request("POST", "/send", {}, b"x", 5)
    assert (srv.connections, len(srv.requests)) == (1, 2)
    await pool.close()


async def test_half_an_answer_is_lost(server: Start) -> None:
    def half(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer()[:-5])
        writer.close()

    srv = await server(half)
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    with pytest.raises(ResponseLost):
        await pool.request("GET", "/", {}, None, 5)
    await pool.close()


async def test_garbage_is_lost_and_the_connection_not_reused(server: Start) -> None:
    replies = iter([b"NOT HTTP AT ALL\r\n\r\n", answer()])
    srv = await server(lambda request, writer: next(replies))
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5)
    with pytest.raises(ResponseLost):
        await pool.request("GET", "/", {}, None, 5)
    assert (await pool.request("GET", "/", {}, None, 5)).status == 200
    assert srv.connections == 2
    await pool.close()


async def test_silence_times_out_after_sending(server: Start) -> None:
    srv = await server(lambda request, writer: None)
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=0.2)
    with pytest.raises(AnswerTimedOut):
        await pool.request("POST", "/", {}, b"x", 0.2)
    assert len(srv.requests) == 1
    await pool.close()


async def test_refused_connection_sends_nothing() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = KeepAlivePool(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(ConnectFailed):
        await pool.request("GET", "/", {}, None, 5)
    await pool.close()


async def test_a_full_pool_waits_and_out_of_time_is_not_sent(server: Start) -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    def slow(request: bytes, writer: asyncio.StreamWriter) -> None:
        arrived.set()

        async def later() -> None:
            await release.wait()
            writer.write(answer())

        asyncio.get_running_loop().create_task(later())

    srv = await server(slow)
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=0.2, limit=1)
    first = asyncio.ensure_future(pool.request("GET", "/", {}, None, 5))
    await arrived.wait()
    with pytest.raises(NotSent):  # the one connection is busy past this request's time
        await pool.request("GET", "/", {}, None, 0.2)
    second = asyncio.ensure_future(pool.request("GET", "/", {}, None, 5))
    release.set()
    assert [a.status for a in await asyncio.gather(first, second)] == [200, 200]
    assert srv.connections == 1 and len(srv.requests) == 2
    await pool.close()


async def test_stale_idle_connections_are_not_reused(server: Start) -> None:
    srv = await server(lambda request, writer: answer())
    pool = KeepAlivePool(f"http://127.0.0.1:{srv.port}", timeout=5, idle_seconds=0)
    for _ in range(2):
        await pool.request("GET", "/", {}, None, 5)
    assert srv.connections == 2
    await pool.close()


def test_a_line_break_in_a_header_is_refused() -> None:
    pool = KeepAlivePool("https://vendor.invalid", timeout=5)
    with pytest.raises(ValueError, match="line break"):
        pool._head("GET", "/", {"Authorization": "Bearer x\r\nX-Evil: 1"}, None)
    assert pool._head("GET", "/", {}, None).startswith(b"GET / HTTP/1.1\r\nHost: vendor.invalid\r\n")


async def test_vendor_http_sends_as_aiohttp_would(server: Start) -> None:
    """Through VendorHTTP: a JSON body and its Content-Type, a path that needs escaping (as yarl escapes it)."""
    srv = await server(lambda request, writer: answer())
    base = f"http://127.0.0.1:{srv.port}/v1"
    async with aiohttp.ClientSession() as session:
        pool = KeepAlivePool(base, timeout=5)
        http = VendorHTTP("acme", session, base, timeout=5, pool=pool)
        got = await http.request("POST", "/user/{id}", "/user/a b/ü", json={"k": "v"}, headers={"X": "1"})
        assert got.status == 200 and got.json() == {"status": "success"}
        sent = srv.requests[-1].decode()
        assert sent.startswith("POST /v1/user/a%20b/%C3%BC HTTP/1.1\r\n")
        assert "Content-Type: application/json\r\n" in sent and sent.endswith('{"k":"v"}')
        await pool.close()


@pytest.mark.parametrize(
    ("reply", "code", "applied"),
    [
        (lambda request, writer: writer.transport.abort(), "vendor_connection_lost", True),
        (lambda request, writer: None, "vendor_timeout", True),
    ],
)
async def test_vendor_http_maps_wire_failures(
    server: Start, reply: Callable[..., None], code: str, applied: bool
) -> None:
    srv = await server(reply)
    base = f"http://127.0.0.1:{srv.port}"
    async with aiohttp.ClientSession() as session:
        pool = KeepAlivePool(base, timeout=0.2)
        http = VendorHTTP("acme", session, base, timeout=0.2, pool=pool)
        with pytest.raises(VendorUnavailable) as caught:
            await http.request("POST", "/send", data=b"x")
        assert (caught.value.code, caught.value.maybe_applied) == (code, applied)
        await pool.close()


async def test_vendor_http_refused_is_not_applied() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{probe.sockets[0].getsockname()[1]}"
    probe.close()
    await probe.wait_closed()
    async with aiohttp.ClientSession() as session:
        http = VendorHTTP("acme", session, base, timeout=5, pool=KeepAlivePool(base, timeout=5))
        with pytest.raises(VendorUnavailable) as caught:
            await http.request("POST", "/send", data=b"x")
        assert (caught.value.code, caught.value.maybe_applied) == ("vendor_unreachable", False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


async def test_https_checks_the_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    state = Server(lambda request, writer: answer())
    srv = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=served)
    base = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    trusted = KeepAlivePool(base, timeout=5, ssl_context=ssl.create_default_context(cafile=str(cert)))
    for _ in range(2):
        assert (await trusted.request("POST", "/send", {}, b"x", 5)).body == OK
    assert state.connections == 1 and state.requests[0].startswith(b"POST /send HTTP/1.1\r\n")
    await trusted.close()
    with pytest.raises(ConnectFailed):  # the system's certificates do not vouch for it: nothing sent
        await KeepAlivePool(base, timeout=5).request("POST", "/send", {}, b"x", 5)
    assert len(state.requests) == 2
    srv.close()


async def test_vendor_http_out_of_time_before_sending_is_not_applied(server: Start) -> None:
    """Waiting for a connection (here the pool's only one, busy) past the time: nothing went out."""
    arrived = asyncio.Event()

    def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        arrived.set()

    srv = await server(silent)
    base = f"http://127.0.0.1:{srv.port}"
    async with aiohttp.ClientSession() as session:
        pool = KeepAlivePool(base, timeout=0.2, limit=1)
        http = VendorHTTP("acme", session, base, timeout=0.2, pool=pool)
        busy = asyncio.ensure_future(http.request("POST", "/send", data=b"first"))
        await arrived.wait()
        with pytest.raises(VendorUnavailable) as caught:
            await http.request("POST", "/send", data=b"second")
        assert (caught.value.code, caught.value.maybe_applied) == ("vendor_unreachable", False)
        assert [request.endswith(b"first") for request in srv.requests] == [True]
        with pytest.raises(VendorUnavailable, match="no answer"):
            await busy
        await pool.close()
