"""File URLs are streamed into the upload: no copy in memory or on disk, re-fetched for a 401 retry."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from handlers.peerly import files
from handlers.peerly.client import PeerlyClient
from handlers.peerly.media import create_media
from handlers.peerly.sandbox import PeerlySimulator, sandbox_account
from handlers.peerly.settings import PeerlyAccount
from tests.peerly.conftest import make_ctx
from tests.support.wire import self_signed_certificate
from worker.errors import InvalidPayload, TransientError
from worker.vendor_http import VendorHTTP

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (file URLs must be https)."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


class FileServer:
    """An https server of one file: ``/media/clip.mp4`` (with Content-Length) and ``/chunked/clip.mp4``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.gets = 0
        self.url = ""
        self.size_from_get: tuple[int, int] | None = None
        """(n, size): from the n-th GET on, the file has that size (a file replaced meanwhile)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.gets += 1
        if self.size_from_get is not None and self.gets >= self.size_from_get[0]:
            self.size = self.size_from_get[1]
        response = web.StreamResponse()
        if request.path.startswith("/media/"):
            response.content_length = self.size
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        block = b"\0" * (256 * 1024)
        left = self.size
        while left > 0:
            await response.write(block[: min(left, len(block))])
            left -= len(block)
        await response.write_eof()
        return response


@pytest.fixture
async def sim() -> AsyncIterator[PeerlySimulator]:
    simulator = PeerlySimulator(seed=4)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def file_server(certificate: tuple[Path, Path]) -> AsyncIterator[FileServer]:
    server = FileServer(3 * MIB)
    app = web.Application()
    app.router.add_get("/{kind}/{name}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"https://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def client(
    sim: PeerlySimulator, file_server: FileServer, certificate: tuple[Path, Path]
) -> AsyncIterator[PeerlyClient]:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        account = PeerlyAccount.model_validate(
            {**sandbox_account(sim), "upload_url_allowlist": [file_server.url + "/"]}
        )
        yield PeerlyClient(account, VendorHTTP("peerly", session, account.base_url, timeout=10))


async def test_url_file_streamed_to_peerly(
    sim: PeerlySimulator, client: PeerlyClient, file_server: FileServer
) -> None:
    """A file URL on the allow-list reaches Peerly whole, fetched once."""
    result = await create_media({"file": {"url": file_server.url + "/media/clip.mp4"}}, make_ctx(client))
    assert result["size_bytes"] == 3 * MIB
    assert file_server.gets == 1
    assert len(sim.effects("media_created")) == 1


async def test_url_fetched_again_for_the_401_retry(
    sim: PeerlySimulator, client: PeerlyClient, file_server: FileServer
) -> None:
    """A token refused mid-run: the upload is sent again with a new token, the URL fetched again."""
    await create_media({"file": {"url": file_server.url + "/media/clip.mp4"}}, make_ctx(client))
    sim.expire_tokens()
    result = await create_media({"file": {"url": file_server.url + "/chunked/clip.mp4"}}, make_ctx(client))
    assert result["size_bytes"] == 3 * MIB
    assert file_server.gets == 3
    assert len(sim.effects("media_created")) == 2


async def test_url_growing_past_the_limit_is_file_too_large(
    sim: PeerlySimulator, client: PeerlyClient, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL with no Content-Length that sends more than the limit: file_too_large, not outcome_unknown."""
    monkeypatch.setattr(files, "MAX_UPLOAD_BYTES", 1 * MIB)
    with pytest.raises(InvalidPayload) as caught:
        await create_media({"file": {"url": file_server.url + "/chunked/clip.mp4"}}, make_ctx(client))
    assert caught.value.code == "file_too_large"
    assert sim.effects("media_created") == []


async def _upload_headers(
    sim: PeerlySimulator, file_server: FileServer, certificate: tuple[Path, Path], kind: str
) -> list[tuple[str | None, str | None]]:
    """(Content-Length, Transfer-Encoding) of each POST /v2/media sent for one file URL."""
    sent: list[tuple[str | None, str | None]] = []

    async def record(_: object, __: object, params: aiohttp.TraceRequestHeadersSentParams) -> None:
        if params.method == "POST" and params.url.path.endswith("/v2/media"):
            sent.append((params.headers.get("Content-Length"), params.headers.get("Transfer-Encoding")))

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(record)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        account = PeerlyAccount.model_validate(
            {**sandbox_account(sim), "upload_url_allowlist": [file_server.url + "/"]}
        )
        client = PeerlyClient(account, VendorHTTP("peerly", session, account.base_url, timeout=10))
        result = await create_media({"file": {"url": f"{file_server.url}/{kind}/clip.mp4"}}, make_ctx(client))
    assert result["size_bytes"] == 3 * MIB
    return sent


async def test_url_with_a_length_is_sent_with_a_content_length(
    sim: PeerlySimulator, file_server: FileServer, certificate: tuple[Path, Path]
) -> None:
    """A file URL that gave its Content-Length is streamed with one (not chunked): every parser reads it."""
    sent = await _upload_headers(sim, file_server, certificate, "media")
    assert len(sent) == 1
    length, encoding = sent[0]
    assert encoding is None and length is not None and int(length) > 3 * MIB


async def test_url_without_a_length_is_still_streamed_chunked(
    sim: PeerlySimulator, file_server: FileServer, certificate: tuple[Path, Path]
) -> None:
    """A file URL sent chunked cannot announce a length: it is streamed chunked, never buffered to count it."""
    assert await _upload_headers(sim, file_server, certificate, "chunked") == [(None, "chunked")]


async def test_url_that_changes_size_before_the_401_retry_fails_cleanly(
    sim: PeerlySimulator, client: PeerlyClient, file_server: FileServer
) -> None:
    """The retry's body was announced with the first length: a file of another size is file_unavailable."""
    await create_media({"file": {"url": file_server.url + "/media/clip.mp4"}}, make_ctx(client))
    sim.expire_tokens()
    file_server.size_from_get = (3, 4 * MIB)  # GET 2 opens the file, GET 3 is the refetch for the retry
    with pytest.raises(TransientError) as caught:
        await create_media({"file": {"url": file_server.url + "/media/clip.mp4"}}, make_ctx(client))
    assert caught.value.code == "file_unavailable"
    assert len(sim.effects("media_created")) == 1
