"""From AMQP message to a validated :class:`Command`, or a specific rejection.

Checks run cheapest first and each failure has its own code:

==========================  ===============================================
``message_too_large``       body over the size limit (checked before decoding)
``unsupported_encoding``    a content type or encoding other than JSON
``not_utf8``                body is not UTF-8
``not_json``                body is not JSON (or nested too deeply to parse)
``invalid_envelope``        JSON, but not the command envelope (``details.path``)
``message_id_mismatch``     AMQP message_id set and different from ``id``
``reply_to_not_allowed``    ``reply_to`` names a queue that is not a reply queue
``unknown_type``            no handler for ``type``
``routing_key_mismatch``    published with a routing key other than its type
``unknown_account``         ``account`` is not configured for the vendor
``invalid_payload``         payload breaks its schema or a rule (``details.path``)
==========================  ===============================================
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
import pika.spec

from worker.errors import CommandRejected
from worker.validation import Validators

_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
REPLY_QUEUE_PREFIXES = ("amq.gen-", "amq.rabbitmq.reply-to")
"""Server-named queues and direct reply-to: only their declarer reads them.

Any other name could be a shared queue (``switchboard.dead``, another
service's work queue): publishing there through the default exchange would
let a publisher write where its own permissions do not reach.
"""
JSON_CONTENT_TYPES = frozenset({"application/json", "text/json", "application/vnd.switchboard.command+json"})


@dataclass(frozen=True, slots=True)
class Command:
    """A command whose envelope is valid, as it was published (its payload is checked later).

    Frozen: the idempotency fingerprint is taken from it, and ``check``'s normalised
    payload is a value of its own (the handler's), never written back here.
    """

    id: str
    type: str
    payload: dict[str, Any]
    account: str
    meta: dict[str, Any]
    issued_at: str | None
    body: bytes
    properties: pika.spec.BasicProperties
    routing_key: str
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejection:
    """Why a message is not a valid command, and what we could read of it."""

    error: CommandRejected
    command_id: str | None = None
    type: str = "invalid"
    account: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)


def _reject(code: str, message: str, **details: Any) -> CommandRejected:
    return CommandRejected(message, code=code, details=details)


def decode(
    body: bytes,
    properties: pika.spec.BasicProperties,
    routing_key: str,
    validators: Validators,
    *,
    max_bytes: int,
    reply_to_allow: Collection[str] = (),
) -> Command | Rejection:
    """Decode and check the envelope; never raises for bad input."""
    if len(body) > max_bytes:
        return Rejection(
            _reject(
                "message_too_large",
                f"message is {len(body)} bytes, the limit is {max_bytes}",
                size=len(body),
                limit=max_bytes,
            ),
            command_id=_string_id(properties.message_id),
        )
    content_type = (properties.content_type or "").split(";")[0].strip().lower()
    if (content_type and content_type not in JSON_CONTENT_TYPES) or properties.content_encoding not in (
        None,
        "",
        "utf-8",
        "identity",
    ):
        return Rejection(
            _reject(
                "unsupported_encoding",
                f"content type {content_type!r} / encoding {properties.content_encoding!r}: commands are application/json",
            ),
            command_id=_string_id(properties.message_id),
        )
    try:
        document = orjson.loads(body)  # straight from the bytes: no decoded copy of the body
    except orjson.JSONDecodeError:
        return _unreadable(body, properties)
    return _check_envelope(document, body, properties, routing_key, validators, reply_to_allow)


def _unreadable(body: bytes, properties: pika.spec.BasicProperties) -> Rejection:
    """Why a body orjson refused is unreadable: not UTF-8, or not JSON (positions in characters)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(
            _reject("not_utf8", f"body is not UTF-8 (byte {exc.start})"),
            command_id=_string_id(properties.message_id),
        )
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        problem = f"body is not JSON: {exc.msg} at position {exc.pos}"
    else:  # pragma: no cover - valid UTF-8 that orjson reads as text reads as bytes too
        problem = "body is not JSON"
    return Rejection(_reject("not_json", problem), command_id=_string_id(properties.message_id))


def reply_to_allowed(reply_to: str | None, allow: Collection[str] = ()) -> bool:
    """True when there is no ``reply_to``, or it names a reply queue (or one on the allow-list)."""
    return not reply_to or reply_to.startswith(REPLY_QUEUE_PREFIXES) or reply_to in allow


def _check_envelope(
    document: Any,
    body: bytes,
    properties: pika.spec.BasicProperties,
    routing_key: str,
    validators: Validators,
    reply_to_allow: Collection[str] = (),
) -> Command | Rejection:
    try:
        validators.check_envelope(document)
    except CommandRejected as error:
        return Rejection(error, **_readable_parts(document, properties))
    if properties.message_id is not None and properties.message_id != document["id"]:
        return Rejection(
            _reject("message_id_mismatch", "AMQP message_id must equal the command id", path="/id"),
            **_readable_parts(document, properties),
        )
    if not reply_to_allowed(properties.reply_to, reply_to_allow):
        return Rejection(
            _reject(
                "reply_to_not_allowed",
                "reply_to must be a server-named queue (amq.gen-*), direct reply-to "
                "(amq.rabbitmq.reply-to) or a queue on SWITCHBOARD_REPLY_TO_ALLOW",
                reply_to=str(properties.reply_to)[:255],
            ),
            **_readable_parts(document, properties),
        )
    command_type = document["type"]
    try:
        validators.check_type(command_type)
    except CommandRejected as error:
        return Rejection(error, **_readable_parts(document, properties))
    if routing_key != command_type:
        return Rejection(
            _reject(
                "routing_key_mismatch",
                f"published with routing key {routing_key!r}; it must be the command type {command_type!r}",
                path="/type",
            ),
            **_readable_parts(document, properties),
        )
    return Command(
        id=document["id"],
        type=command_type,
        payload=document["payload"],
        account=document.get("account", "default"),
        meta=document.get("meta", {}),
        issued_at=document.get("issued_at"),
        body=body,
        properties=properties,
        routing_key=routing_key,
        headers=dict(properties.headers or {}),
    )


def _readable_parts(document: Any, properties: pika.spec.BasicProperties) -> dict[str, Any]:
    """What an event about an invalid message can still say (id, type, meta)."""
    if not isinstance(document, dict):
        return {"command_id": _string_id(properties.message_id)}
    command_type = document.get("type")
    account = document.get("account")
    meta = document.get("meta")
    return {
        "command_id": _string_id(document.get("id")) or _string_id(properties.message_id),
        "type": command_type if isinstance(command_type, str) and _TYPE.match(command_type) else "invalid",
        "account": account if isinstance(account, str) and 0 < len(account) <= 64 else "default",
        "meta": meta if isinstance(meta, dict) else {},
    }


def _string_id(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 128:
        return value
    return None
