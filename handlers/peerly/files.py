"""Files the worker sends to Peerly: a phone list written from rows, or a referenced file.

A payload may point at a file in two ways only:

- ``{"path": "lists/may.csv"}``: relative to the account's ``upload_dir``
  (no ``..``, no symlink out of it; absolute paths must lie inside it);
- ``{"url": "https://..."}``: an https URL on the account's
  ``upload_url_allowlist`` (see :func:`allowed_url`); redirects are not
  followed, since they could lead off the list.

Anything else is ``InvalidPayload``. Files over 100 MiB (104,857,600 bytes)
are refused (``InvalidPayload`` with code ``file_too_large``): it is the
payload's file that is wrong.

Memory: a referenced file is never read whole. It is streamed to Peerly from
disk, or from the URL as it downloads (no copy on disk either: the pod's
``/tmp`` is 64 MiB), so one upload holds at most :data:`STREAM_HOLD_BYTES`.
A 401 retry opens the file (or fetches the URL) again. The request has a
Content-Length whenever the file's size is known (:class:`SizedStream`). Each upload reserves
what it holds in :mod:`worker.file_budget` first; over the budget it waits.

Time: an upload may take ``vendor_timeout_seconds + size /
upload_min_bytes_per_second`` (:func:`upload_seconds`); the handler deadline
is moved to fit it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import ipaddress
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

import aiohttp
import yarl

from handlers.peerly.client import MAX_UPLOAD_BYTES, PeerlyClient
from handlers.peerly.settings import PeerlyAccount
from handlers.peerly.validation import MAPPABLE_COLUMNS
from worker import deadline
from worker.errors import InvalidPayload, PermanentError, SwitchboardError, TransientError

ZIP_ABOVE_BYTES = 256 * 1024
"""A CSV written from rows is sent zipped above this size."""

STREAM_CHUNK_BYTES = 256 * 1024
"""Bytes read from a file URL at a time."""
STREAM_HOLD_BYTES = 1024 * 1024
"""What one streamed file holds at most (a read chunk plus the HTTP client's buffers)."""

FETCH_CONNECT_SECONDS = 15.0
FETCH_IDLE_SECONDS = 60.0
"""A file URL that sends nothing for this long has failed; the upload's budget bounds the total."""


class FileSource(Protocol):
    """A file ready to go into a multipart form, as many times as a 401 retry needs."""

    filename: str
    failure: SwitchboardError | None
    """Set when reading the file failed mid-upload (the request then fails too)."""

    @property
    def size(self) -> int:
        """Bytes to send (for a URL without Content-Length: the 100 MiB ceiling)."""

    @property
    def hold_bytes(self) -> int:
        """Memory it holds while sent: what it reserves in the file budget."""

    def body(self) -> Any:
        """A fresh value for ``FormData.add_field`` (bytes, an open file, an async iterator)."""

    async def close(self) -> None: ...


@dataclass
class UploadFile:
    """A file made in memory (a CSV from rows)."""

    filename: str
    content: bytes
    content_type: str
    failure: SwitchboardError | None = None

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def hold_bytes(self) -> int:
        return len(self.content)

    def body(self) -> Any:
        return self.content

    async def close(self) -> None:
        return None


@dataclass
class LocalFile:
    """A file in ``upload_dir``, streamed from disk (aiohttp reads it in 64 KiB chunks off the loop)."""

    filename: str
    path: Path
    size: int
    hold_bytes: int = STREAM_HOLD_BYTES
    failure: SwitchboardError | None = None
    _open: list[IO[bytes]] = field(default_factory=list)

    def body(self) -> Any:
        handle = self.path.open("rb")
        self._open.append(handle)
        return handle

    async def close(self) -> None:
        for handle in self._open:
            handle.close()
        self._open.clear()


class SizedStream(aiohttp.payload.AsyncIterablePayload):
    """A streamed file part whose length is known (the file URL's Content-Length).

    aiohttp sends a streamed body chunked; with every part's size known the
    multipart body gets a Content-Length instead, which every server reads
    (some multipart parsers do not read chunked request bodies).
    """

    def __init__(self, value: AsyncIterator[bytes], size: int, content_type: str) -> None:
        super().__init__(value, content_type=content_type)
        self._size = size


class RemoteFile:
    """A file URL, streamed into the upload as it downloads."""

    hold_bytes = STREAM_HOLD_BYTES

    def __init__(self, session: aiohttp.ClientSession, url: yarl.URL, where: str) -> None:
        self.session = session
        self.url = url
        self.where = where
        self.filename = PurePosixPath(url.path).name or "file"
        self.size = MAX_UPLOAD_BYTES
        self.length: int | None = None
        """The file server's Content-Length (None: it sent the file chunked)."""
        self.failure: SwitchboardError | None = None
        self._first: aiohttp.ClientResponse | None = None

    async def open(self) -> None:
        """Fetch the headers now, so a missing or too large file fails before Peerly is called."""
        self._first = await self._get()
        if self._first.content_length is not None:
            self.size = self.length = self._first.content_length

    def body(self) -> Any:
        return self._stream()

    async def close(self) -> None:
        if self._first is not None:
            self._first.release()
            self._first = None

    async def _get(self) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=FETCH_CONNECT_SECONDS, sock_read=FETCH_IDLE_SECONDS
        )
        try:
            response = await self.session.get(self.url, timeout=timeout, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(
                f"cannot fetch the file URL ({exc.__class__.__name__})", code="file_unavailable"
            ) from exc
        if response.status == 200 and (response.content_length or 0) <= MAX_UPLOAD_BYTES:
            return response
        response.release()
        if response.status >= 500:
            raise TransientError(f"the file URL answered HTTP {response.status}", code="file_unavailable")
        if response.status != 200:
            raise PermanentError(
                f"the file URL answered HTTP {response.status}",
                code="file_unavailable",
                details={"path": self.where, "http_status": response.status},
            )
        raise too_large(response.content_length or 0, self.where)

    async def _stream(self) -> AsyncIterator[bytes]:
        response, self._first = self._first, None
        sent = 0
        try:
            if response is None:  # a second send (401 retry): fetch again
                response = await self._get()
                if self.length is not None and response.content_length != self.length:
                    # The part was announced with the first answer's length: a different file cannot fit it.
                    raise TransientError(
                        "the file URL changed size between two sends", code="file_unavailable"
                    )
            async for chunk in response.content.iter_chunked(STREAM_CHUNK_BYTES):
                sent += len(chunk)
                if sent > MAX_UPLOAD_BYTES:
                    raise too_large(sent, self.where)
                yield chunk
        except SwitchboardError as exc:
            self.failure = exc
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failure = TransientError(
                f"the file URL broke off mid-download ({exc.__class__.__name__})", code="file_unavailable"
            )
            raise
        finally:
            if response is not None:
                response.release()


async def post_file(
    client: PeerlyClient,
    endpoint: str,
    fields: dict[str, str],
    file_field: str,
    source: FileSource,
    content_type: str,
) -> Any:
    """POST ``fields`` and the file as multipart with the upload's own time budget.

    The caller holds the file budget. A request that broke because the file
    could not be read (a URL that stopped, grew past 100 MiB) is reported as
    that failure: Peerly got an unfinished multipart body, which it cannot
    have taken as a file.
    """
    base = client.http.timeout.total or 15.0
    seconds = upload_seconds(client.account, base, source.size)
    # Room for a 401 retry (a second send) and the login before it.
    deadline.at_least(2 * seconds + base)

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        for name, value in fields.items():
            data.add_field(name, value)
        body = source.body()
        if isinstance(source, RemoteFile) and source.length is not None:
            body = SizedStream(body, source.length, content_type)
        data.add_field(file_field, body, filename=source.filename, content_type=content_type)
        return data

    try:
        return await client.call(
            "POST", endpoint, form=form, request_timeout=aiohttp.ClientTimeout(total=seconds)
        )
    except TransientError:
        if source.failure is not None:
            raise source.failure from None
        raise
    finally:
        await source.close()


def upload_seconds(account: PeerlyAccount, base_seconds: float, size: int) -> float:
    """The time budget of one upload: the vendor timeout plus the size at the slowest rate we accept."""
    return base_seconds + size / account.upload_min_bytes_per_second


def too_large(size: int, path: str) -> InvalidPayload:
    return InvalidPayload(
        f"the file has {size} bytes; Peerly takes at most {MAX_UPLOAD_BYTES}",
        path=path,
        code="file_too_large",
    )


def csv_from_rows(rows: list[dict[str, Any]], stem: str = "phone_list") -> tuple[UploadFile, dict[str, int]]:
    """The CSV (zipped when large) of ``rows`` and the ``list_map`` of its columns."""
    present = {name for row in rows for name in row}
    columns = [name for name in MAPPABLE_COLUMNS if name in present]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(name, "") for name in columns])
    content = buffer.getvalue().encode("utf-8")
    list_map = {name: index + 1 for index, name in enumerate(columns)}
    if len(content) <= ZIP_ABOVE_BYTES:
        return UploadFile(f"{stem}.csv", content, "text/csv"), list_map
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{stem}.csv", content)
    return UploadFile(f"{stem}.zip", zipped.getvalue(), "application/zip"), list_map


async def open_reference(
    ref: dict[str, Any], account: PeerlyAccount, session: aiohttp.ClientSession, path: str
) -> LocalFile | RemoteFile:
    """The file a reference at JSON path ``path`` names, checked and ready to stream."""
    if "path" in ref:
        file = local_path(ref["path"], account, f"{path}/path")
        size = (await asyncio.to_thread(file.stat)).st_size
        if size > MAX_UPLOAD_BYTES:
            raise too_large(size, f"{path}/path")
        return LocalFile(file.name, file, size)
    url = allowed_url(str(ref.get("url", "")), account.upload_url_allowlist)
    if url is None:
        raise InvalidPayload("the URL is not https or not on the upload allow-list", path=f"{path}/url")
    remote = RemoteFile(session, url, f"{path}/url")
    await remote.open()
    return remote


def local_path(relative: str, account: PeerlyAccount, path: str) -> Path:
    """The file ``relative`` names inside ``upload_dir``, or InvalidPayload."""
    if account.upload_dir is None:
        raise InvalidPayload("file paths are not allowed: the account has no upload_dir", path=path)
    root = account.upload_dir.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise InvalidPayload("the path leads out of the upload directory", path=path)
    if not candidate.is_file():
        raise InvalidPayload("no such file in the upload directory", path=path)
    return candidate


# -- the URL allow-list -------------------------------------------------------
@dataclass(frozen=True)
class _Place:
    host: str
    port: int
    path: str


def _normal_host(host: str) -> str | None:
    """Lower case, no trailing dot, IP literals in one spelling; None for a host that hides an IP."""
    host = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        pass
    # 127.1, 0x7f.1, 2130706433: resolvers read these as IPv4 addresses.
    if host and all(part.isdigit() or part.startswith("0x") for part in host.split(".")):
        return None
    return host or None


def _place(url: str) -> _Place | None:
    """Where an https URL really leads, as the HTTP client will send it (dot segments resolved,
    percent-encoding of unreserved characters decoded, default port made explicit), or None."""
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        return None
    if parsed.scheme != "https" or parsed.user is not None or parsed.password is not None:
        return None
    if "@" in (parsed.raw_authority or ""):
        return None
    raw_path = parsed.raw_path.lower()
    if "%2f" in raw_path or "%5c" in raw_path or "\\" in parsed.path:
        return None  # an encoded slash is a separator to some servers and not to us
    host = _normal_host(parsed.raw_host or "")
    if host is None or parsed.port is None:
        return None
    return _Place(host, parsed.port, parsed.raw_path or "/")


def _entry_place(entry: str) -> _Place | None:
    if "://" not in entry:  # a host name alone: that host, on port 443 only
        host = _normal_host(entry.strip())
        return None if host is None else _Place(host, 443, "/")
    return _place(entry.strip())


def allowed_url(url: str, allowlist: list[str]) -> yarl.URL | None:
    """The URL to fetch when ``url`` is on ``allowlist``, else None.

    Both sides are normalised first (see :func:`_place`): ``/lists/../private``
    and ``/lists/%2e%2e/private`` are ``/private``; ``HTTPS://Files.Example.ORG:443``
    is ``files.example.org`` port 443; user-info is refused. A host-only entry
    allows that host on port 443 only; a URL entry allows its host and port
    (443 when none is given) and every path under its path.
    """
    target = _place(url)
    if target is None:
        return None
    for entry in allowlist:
        allowed = _entry_place(entry)
        if allowed is None or (allowed.host, allowed.port) != (target.host, target.port):
            continue
        prefix = allowed.path if allowed.path.endswith("/") else allowed.path + "/"
        if allowed.path == "/" or target.path == allowed.path or target.path.startswith(prefix):
            return yarl.URL(url)
    return None


def url_allowed(url: str, allowlist: list[str]) -> bool:
    """Whether ``url`` is https and on ``allowlist`` (see :func:`allowed_url`)."""
    return allowed_url(url, allowlist) is not None
