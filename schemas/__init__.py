"""JSON Schemas (draft 2020-12) of the Switchboard contract, version 1.

The files in ``v1/`` are the one source of truth: the worker validates with
them as they are, and ``switchboard schemas`` exports them for publishers.
``v1/command.json`` and ``v1/event.json`` are the envelopes; ``v1/payloads/``
has one schema per command type, named after it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson

VERSION = "v1"


def _root() -> Any:
    return resources.files(__name__).joinpath(VERSION)


@cache
def load(name: str) -> dict[str, Any]:
    """The schema ``name``: ``command``, ``event``, or a command type."""
    folder = _root() if name in ("command", "event") else _root().joinpath("payloads")
    resource = folder.joinpath(f"{name}.json")
    if not resource.is_file():
        raise KeyError(f"no schema named {name!r}")
    schema: dict[str, Any] = orjson.loads(resource.read_bytes())
    return schema


def payload_names() -> list[str]:
    """Command types that have a payload schema."""
    return sorted(
        entry.name.removesuffix(".json")
        for entry in _root().joinpath("payloads").iterdir()
        if entry.name.endswith(".json")
    )
