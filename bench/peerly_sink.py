"""A Peerly stand-in for the RSS bench: the documented login and create-media answers, the file discarded.

The strict simulator (``handlers/peerly/sandbox.py``) keeps every request
body to check it; twelve 100 MiB uploads would cost it gigabytes. This
server reads the multipart body as a stream, counts the file's bytes and
answers ``201`` with the fields the document shows. Prints ``READY <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys

from aiohttp import BodyPartReader, web


async def token_auth(request: web.Request) -> web.Response:
    await request.read()
    user = {"first_name": "Bench", "last_name": "User", "email": "bench@switchboard.invalid", "user_id": 1}
    user |= {"user_type": "USER", "local_timezone": "US/Central", "identities": []}
    return web.json_response(
        {"token": secrets.token_urlsafe(24), "root_accounts": ["12345678"], "user": user}
    )


async def create_media(request: web.Request) -> web.Response:
    reader = await request.multipart()
    fields: dict[str, str] = {}
    size, filename = 0, "file"
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.filename is None:
            fields[part.name] = (await part.read()).decode()
            continue
        filename = part.filename
        while chunk := await part.read_chunk(1 << 20):
            size += len(chunk)
    media = {
        "account_id": fields.get("account_id", ""),
        "identity_id": fields.get("identity_id", ""),
        "media_id": secrets.token_hex(16),
        "media_type": "VIDEO",
        "mime_type": "video/mp4",
        "size_bytes": size,
        "status": "ACTIVE",
        "error": "",
        "title": fields.get("title", filename),
        "preview_url": "",
        "thumbnail_url": "",
    }
    return web.json_response(media, status=201)


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/api/token-auth", token_auth)
    app.router.add_post("/api/v2/media", create_media)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(main(parser.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
