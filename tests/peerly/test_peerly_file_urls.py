"""File URLs are streamed into the upload: no copy in memory or on disk, re-fetched for a 401 retry."""

from __future__ import annotations

import ssl
import subprocess
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
from worker.errors import InvalidPayload
from worker.vendor_http import VendorHTTP

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (file URLs must be https)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
    ]
    subprocess.run(
        [*request, "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


class FileServer:
    """An https server of one file: ``/media/clip.mp4`` (with Content-Length) and ``/chunked/clip.mp4``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.gets = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.gets += 1
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
