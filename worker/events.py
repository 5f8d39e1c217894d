"""Result events: the shape publishers rely on (schemas/v1/event.json)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "rejected"})


def utc_iso(timestamp: float | None = None) -> str:
    moment = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(
    *,
    command_id: str | None,
    type: str,
    account: str,
    status: str,
    attempts: int,
    duration_ms: float,
    meta: dict[str, Any],
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    occurred_at: float | None = None,
) -> dict[str, Any]:
    """An event; ``occurred_at`` is Unix seconds (default: now)."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "command_id": command_id,
        "type": type,
        "account": account,
        "status": status,
        "attempts": attempts,
        "occurred_at": utc_iso(occurred_at),
        "duration_ms": round(duration_ms, 3),
        "meta": meta,
    }
    if result is not None:
        event["result"] = result
    if error is not None:
        event["error"] = error
    return event


def encode(event: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:
        # Only the publisher's own data can be unencodable (meta nested past
        # orjson's limit): the event still goes out, without it.
        event["meta"] = {"dropped": "meta could not be encoded (nested too deeply)"}
        return orjson.dumps(event)


def routing_key(event: dict[str, Any]) -> str:
    return f"{event['type']}.{event['status']}"
