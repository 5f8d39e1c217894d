"""Files the worker sends to Peerly: a phone list written from rows, or a referenced file.

A payload may point at a file in two ways only:

- ``{"path": "lists/may.csv"}``: relative to the account's ``upload_dir``
  (no ``..``, no symlink out of it; absolute paths must lie inside it);
- ``{"url": "https://..."}``: an https URL whose host (or URL prefix) is on the
  account's ``upload_url_allowlist``; redirects are not followed, since they
  could lead off the list.

Anything else is ``InvalidPayload``. Files over 100 MiB (104,857,600 bytes)
are refused before anything is sent to Peerly (``InvalidPayload`` with code
``file_too_large``): it is the payload's file that is wrong. Files are read
into memory, which that limit bounds.
"""

from __future__ import annotations

import asyncio
import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from handlers.peerly.client import MAX_UPLOAD_BYTES
from handlers.peerly.settings import PeerlyAccount
from handlers.peerly.validation import MAPPABLE_COLUMNS
from worker.errors import InvalidPayload, PermanentError, TransientError

ZIP_ABOVE_BYTES = 256 * 1024
"""A CSV written from rows is sent zipped above this size."""

FETCH_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class UploadFile:
    filename: str
    content: bytes
    content_type: str


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


async def read_reference(
    ref: dict[str, Any], account: PeerlyAccount, session: aiohttp.ClientSession, path: str
) -> tuple[str, bytes]:
    """(file name, content) of a file reference at JSON path ``path``."""
    if "path" in ref:
        file = local_path(ref["path"], account, f"{path}/path")
        return file.name, await asyncio.to_thread(_read_local, file, f"{path}/path")
    url = str(ref.get("url", ""))
    if not url_allowed(url, account.upload_url_allowlist):
        raise InvalidPayload("the URL is not https or not on the upload allow-list", path=f"{path}/url")
    name = PurePosixPath(urlsplit(url).path).name or "file"
    return name, await _fetch(session, url, f"{path}/url")


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


def _read_local(file: Path, path: str) -> bytes:
    size = file.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise too_large(size, path)
    return file.read_bytes()


def url_allowed(url: str, allowlist: list[str]) -> bool:
    """Whether ``url`` is https and matches a host name or URL prefix of ``allowlist``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname or parts.username or parts.password:
        return False
    for entry in allowlist:
        if "://" not in entry:
            if parts.hostname == entry.lower().strip("."):
                return True
            continue
        allowed = urlsplit(entry)
        prefix = allowed.path if allowed.path.endswith("/") else allowed.path + "/"
        if (
            allowed.hostname == parts.hostname
            and allowed.port == parts.port
            and (allowed.path in ("", "/") or parts.path == allowed.path or parts.path.startswith(prefix))
        ):
            return True
    return False


async def _fetch(session: aiohttp.ClientSession, url: str, path: str) -> bytes:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
    try:
        async with session.get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status >= 500:
                raise TransientError(f"the file URL answered HTTP {response.status}", code="file_unavailable")
            if response.status != 200:
                raise PermanentError(
                    f"the file URL answered HTTP {response.status}",
                    code="file_unavailable",
                    details={"path": path, "http_status": response.status},
                )
            if (response.content_length or 0) > MAX_UPLOAD_BYTES:
                raise too_large(response.content_length or 0, path)
            content = bytearray()
            async for chunk in response.content.iter_chunked(1 << 20):
                content += chunk
                if len(content) > MAX_UPLOAD_BYTES:
                    raise too_large(len(content), path)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransientError(
            f"cannot fetch the file URL ({exc.__class__.__name__})", code="file_unavailable"
        ) from exc
    return bytes(content)
