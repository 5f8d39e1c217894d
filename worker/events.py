"""Result events: the shape publishers rely on (schemas/v1/event.json)."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from typing import Any

import orjson

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "rejected"})

# The hex digit of a UUID's variant nibble (10xx: RFC 9562) for any random nibble.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


_RANDOM_BATCH = 64
"""Event ids' random bytes are read from the OS this many ids at a time: one system call, not one an event."""
_random: list[str] = []
"""Hex of 16 random bytes each, not yet used; taken from the end."""


def _forget_random() -> None:
    _random.clear()  # a forked child must not hand out the ids its parent will


os.register_at_fork(after_in_child=_forget_random)


def new_event_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` writes it, at a third of its cost:
    built from the hex of 16 random bytes (``os.urandom``, as uuid4 reads them), without a
    ``UUID`` object per event."""
    if not _random:
        batch = os.urandom(16 * _RANDOM_BATCH).hex()
        _random.extend(batch[start : start + 32] for start in range(0, len(batch), 32))
    digits = _random.pop()
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{_VARIANT[digits[16]]}{digits[17:20]}-{digits[20:]}"


_second: tuple[int, str] = (-1, "")
"""The last whole second formatted (``2026-01-01T00:00:00``): events come many a second."""


def utc_iso(timestamp: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds (``2026-01-01T00:00:00.123Z``), as ``datetime.isoformat`` writes it."""
    global _second
    if timestamp is None:
        timestamp = time.time()
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1_000_000)  # as datetime.fromtimestamp rounds, then milliseconds cut
    if micros < 0 or micros >= 1_000_000:
        moment = datetime.fromtimestamp(timestamp, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    second, text = _second
    if second != whole:
        second = int(whole)
        text = datetime.fromtimestamp(second, UTC).isoformat()[:19]
        _second = (second, text)
    return f"{text}.{micros // 1000:03d}Z"


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
        "event_id": new_event_id(),
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
