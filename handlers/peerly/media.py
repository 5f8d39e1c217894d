"""``create_media``: upload an image or video for MMS templates.

Peerly may answer ``201`` with ``"status": "ERROR"`` when it could not
process the file: that is a failure (``media_processing_failed``) carrying
Peerly's ``error`` text. ``identity_id`` is required by the document; when the
payload has none, the account id is sent (the identity of the account itself).
The file is streamed (see :mod:`handlers.peerly.files` for memory and time).
"""

from __future__ import annotations

import mimetypes
from typing import Any

from handlers.peerly.client import PeerlyClient
from handlers.peerly.files import STREAM_HOLD_BYTES, open_reference, post_file
from worker import file_budget
from worker.errors import VendorRejected
from worker.registry import CommandContext, Commands, Result

commands = Commands()

MEDIA_ENDPOINT = "/v2/media"
_RESULT_FIELDS = ("media_type", "mime_type", "status", "title", "preview_url", "thumbnail_url", "size_bytes")


@commands.command(
    "create_media",
    safe_to_repeat=False,
    example={"account_id": "12345678", "title": "Rally video", "file": {"path": "media/rally.mp4"}},
)
async def create_media(payload: dict[str, Any], ctx: CommandContext[PeerlyClient]) -> Result:
    """Upload a media file (image or video) to Peerly for use in job templates."""
    client = ctx.client
    account = client.account_id(payload)
    fields = {"account_id": account, "identity_id": str(payload.get("identity_id") or account)}
    if "title" in payload:
        fields["title"] = payload["title"]
    async with file_budget.budget.hold(STREAM_HOLD_BYTES):
        source = await open_reference(payload["file"], client.account, client.http.session, "/payload/file")
        content_type = mimetypes.guess_type(source.filename)[0] or "application/octet-stream"
        answer = await post_file(client, MEDIA_ENDPOINT, fields, "initial_file_upload", source, content_type)
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
        raise client.invalid_response(MEDIA_ENDPOINT, "no status")
    if answer["status"].upper() == "ERROR":
        text = str(answer.get("error") or "no error text")[:500]
        raise VendorRejected(
            f"peerly could not process the media: {text}",
            code="media_processing_failed",
            details={"media_id": answer.get("media_id"), "vendor_error": text, "http_status": 201},
        )
    if not isinstance(answer.get("media_id"), str) or not answer["media_id"]:
        raise client.invalid_response(MEDIA_ENDPOINT, "no media_id")
    return {
        "media_id": answer["media_id"],
        "account_id": account,
        **{key: answer.get(key) for key in _RESULT_FIELDS},
    }
