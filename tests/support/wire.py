"""Raw HTTP/1.1 on loopback for tests: a request read whole, and a self-signed certificate."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and its Content-Length body, as the bytes that arrived."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 in ``directory``, made by openssl."""
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
