"""Results as the runtime delivers them: bounded in size, and not replayed past their expiry.

**Size.** A handler may return a vendor's whole array (``list_contacts``). An
event larger than the broker or a subscriber accepts would never arrive, so a
succeeded event is kept under ``SWITCHBOARD_MAX_RESULT_BYTES`` (encoded, the
whole event). Past it, the largest list in the result (top level, or one level
down) is cut to the most items that fit, and the result says so::

    "truncated": {"field": "contacts", "returned": 812, "total": 5000, "max_result_bytes": 262144}

If no list can be cut far enough, the result is replaced by
``{"truncated": {"field": null, "result_bytes": N, ...}}``. Nothing else is
dropped silently, and the publisher can page or filter the request.

**Expiry.** A handler declares ``result_expires_after_seconds`` when what it
returns stops being usable (a login URL valid 60 s). A repeated command (same
id) whose stored result is older than that is run again when the command is
safe to repeat (a fresh result); otherwise the stored event is republished
with ``"result_expired": true`` so nobody mistakes it for a usable one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson


def _lists(result: dict[str, Any]) -> list[tuple[tuple[str, ...], list[Any]]]:
    """The lists of a result (top level and one level down), largest encoded first."""
    found: list[tuple[tuple[str, ...], list[Any]]] = []
    for name, value in result.items():
        if isinstance(value, list):
            found.append(((name,), value))
        elif isinstance(value, dict):
            found += [((name, inner), v) for inner, v in value.items() if isinstance(v, list)]
    return sorted(found, key=lambda item: -len(orjson.dumps(item[1])))


def _with(result: dict[str, Any], where: tuple[str, ...], items: list[Any]) -> dict[str, Any]:
    copy = dict(result)
    if len(where) == 1:
        copy[where[0]] = items
    else:
        copy[where[0]] = {**copy[where[0]], where[1]: items}
    return copy


def _cut(
    result: dict[str, Any], where: tuple[str, ...], items: list[Any], count: int, max_bytes: int
) -> dict[str, Any]:
    """``result`` with the list at ``where`` cut to ``count`` items, and a note saying so."""
    note = {"field": ".".join(where), "returned": count, "total": len(items), "max_result_bytes": max_bytes}
    return {**_with(result, where, items[:count]), "truncated": note}


def bound(result: dict[str, Any], size: Callable[[dict[str, Any]], int], max_bytes: int) -> dict[str, Any]:
    """``result``, or a truncated copy whose event (``size`` encodes it) fits in ``max_bytes``."""
    total_size = size(result)
    if total_size <= max_bytes:
        return result
    for where, items in _lists(result):
        if size(_cut(result, where, items, 0, max_bytes)) > max_bytes:
            continue
        low, high = 0, len(items)  # low items fit; find the largest count that does
        while low < high:
            middle = (low + high + 1) // 2
            if size(_cut(result, where, items, middle, max_bytes)) <= max_bytes:
                low = middle
            else:
                high = middle - 1
        return _cut(result, where, items, low, max_bytes)
    return {"truncated": {"field": None, "result_bytes": total_size, "max_result_bytes": max_bytes}}


def expired(event: dict[str, Any], expires_after_seconds: float | None, now: float) -> bool:
    """Whether a stored succeeded event's result is older than its declared expiry."""
    if expires_after_seconds is None or event.get("status") != "succeeded":
        return False
    try:
        made = datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return True  # no usable time: do not hand out what may be stale
    return now - made >= expires_after_seconds
