"""The AsyncAPI 3.0 contract of the bus, built from the schema files the worker validates with.

``switchboard schemas --asyncapi`` prints :func:`render`; ``docs/asyncapi.json``
is a copy that ``tests/asyncapi`` keeps in sync. Regenerate it with::

    python -m worker.asyncapi > docs/asyncapi.json

The document is written from a publisher's side (the application that uses it
sends commands and receives events)::

    channels    command.<type>    address <type> on switchboard.commands (one per command type)
                events.<type>     address <type>.{status} on switchboard.events
                events.invalid    address invalid.rejected (a message nobody could read)
                queue.<name>      the queues behind the exchanges (informational)
    operations  send_<type>              reply: events.<type>
                receive_<type>_events, receive_invalid_events
    components  schemas   command, event (the envelopes), <type>_payload, <type>_command,
                          <type>_<status>_event, rejection_code, failure_code, trace_headers
                messages  command.<type>, event.<type>.<status>, event.invalid.rejected

No schema is copied by hand: the envelopes and payloads are ``schemas.load``
embedded as they are, with mechanical changes only. So that AsyncAPI tools
(whose Schema Object is JSON Schema draft 07) read them as the worker's 2020-12
validator does: ``$schema``/``$id`` are dropped, local ``#/$defs/...``
references are rewritten to point into ``#/components/schemas/<name>``, and a
``$ref`` with sibling keywords is wrapped in ``allOf`` (draft 07 ignores the
siblings of ``$ref``). So that code generators name types well: the ``title``
becomes ``<type> payload`` (the file's ``$id`` and title are kept as
``x-schema-id`` and ``x-schema-title``).

The error codes live in :data:`ERROR_CODES`, the one table with their
descriptions (a scan of the source can find codes but not say what they mean);
``tests/asyncapi`` scans ``worker/`` and ``handlers/`` for every code raised
and fails when the table and the code disagree.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
from collections.abc import Iterable
from typing import Any

import schemas
from worker import topology
from worker.registry import CommandSpec, Registry

AMQP_BINDING_VERSION = "0.3.0"
VHOST = "/"
PERSISTENT = 2

TERMINAL_STATUSES = ("succeeded", "failed", "rejected")

STATUS_DESCRIPTIONS = {
    "succeeded": "Terminal. The vendor did it; `result` holds what it returned that matters.",
    "failed": (
        "Terminal. The command was valid but could not be done: the vendor refused, the credentials were "
        "refused, retries gave up (`error.details.gave_up`), or the outcome is unknown. `error.code` says why; "
        "the original message is kept in switchboard.dead."
    ),
    "rejected": (
        "Terminal. Not a valid command (envelope, payload, account, id reused for another command); the "
        "vendor was not called. Rejections are not stored: fix the message and publish it again."
    ),
    "progress": "Not terminal. A step of a long-running command; `result` holds the progress so far.",
    "deferred": (
        "Not terminal. The worker postponed the command (quiet hours at the recipient: `result.reason`, "
        "`result.until`, `result.time_zone`); it runs then, and a terminal event follows."
    ),
}

ERROR_CODES: dict[str, tuple[str, str]] = {
    # code: (the status of the event that carries it, what it means)
    "message_too_large": ("rejected", "The body is over the size limit (`details.size`, `details.limit`)."),
    "unsupported_encoding": ("rejected", "A content type or content encoding other than JSON / UTF-8."),
    "not_utf8": ("rejected", "The body is not UTF-8."),
    "not_json": ("rejected", "The body is not JSON (or nested too deeply to parse)."),
    "invalid_envelope": ("rejected", "JSON, but not the command envelope (`details.path`)."),
    "message_id_mismatch": ("rejected", "The AMQP message_id is set and differs from the command `id`."),
    "reply_to_not_allowed": (
        "rejected",
        "`reply_to` names a queue that is neither server-named (`amq.gen-*`), direct reply-to "
        "(`amq.rabbitmq.reply-to`) nor on SWITCHBOARD_REPLY_TO_ALLOW; nothing is sent there (`details.reply_to`).",
    ),
    "unknown_type": (
        "rejected",
        "No handler for `type`; the event's routing key is `<type>.rejected` (`invalid.rejected` when unreadable).",
    ),
    "routing_key_mismatch": ("rejected", "Published with a routing key other than the command type."),
    "unknown_account": ("rejected", "`account` is not configured for the command's vendor (`details.path`)."),
    "invalid_payload": (
        "rejected",
        "The payload breaks its schema or a rule (`details.path` is the JSON pointer, `details.errors`).",
    ),
    "invalid_command": ("rejected", "Not a valid command (generic)."),
    "idempotency_conflict": (
        "rejected",
        "This `id` was already used (same account) for a command of another type or payload.",
    ),
    "file_too_large": (
        "failed",
        "The file is larger than the vendor accepts (`details.path`); found as the file is read, so it ends `failed`.",
    ),
    "permanent_error": ("failed", "Valid, but cannot be done (generic)."),
    "vendor_rejected": ("failed", "The vendor refused the request (4xx, or an answer that says failure)."),
    "vendor_auth_failed": ("failed", "The vendor refused the account's credentials, also after a refresh."),
    "vendor_failure": ("failed", "The vendor answered with a failure status (`details.status`)."),
    "not_found": ("failed", "The vendor has no such object."),
    "invalid_vendor_response": (
        "failed",
        "The vendor's answer does not say what its documentation says it should.",
    ),
    "outcome_unknown": (
        "failed",
        "The vendor may or may not have acted (an attempt was cut off); not repeated, to avoid doing it "
        "twice. Reconcile before publishing again with a new id.",
    ),
    "recipient_opted_out": ("failed", "The recipient is on the suppression list; nothing was sent."),
    "cancelled": (
        "failed",
        "An operator cancelled the command before it ran (`details.reason`, `details.cancelled_at`).",
    ),
    "suppression_list_unavailable": (
        "failed",
        "The suppression list could not be read, so nothing was sent; retries gave up.",
    ),
    "list_processing_failed": (
        "failed",
        "The vendor could not process the uploaded list (`details.list_state`).",
    ),
    "list_processing_timeout": ("failed", "The uploaded list did not become ACTIVE in time."),
    "media_processing_failed": ("failed", "The vendor could not process the media file."),
    "file_unavailable": (
        "failed",
        "The file URL could not be fetched (after retries when the error was transient).",
    ),
    "poison_message": (
        "failed",
        "Delivered many times without an outcome (workers stopped while running it).",
    ),
    "internal_error": ("failed", "An unexpected error in the worker's handler."),
    "handler_timeout": ("failed", "The handler did not finish in time, and retries gave up."),
    "transient_error": ("failed", "A transient error (generic); retries gave up."),
    "rate_limited": ("failed", "The vendor or our own limiter kept refusing for rate; retries gave up."),
    "vendor_unavailable": ("failed", "The vendor answered 503; retries gave up."),
    "vendor_unreachable": ("failed", "Could not connect to the vendor; retries gave up."),
    "vendor_timeout": ("failed", "The vendor did not answer in time; retries gave up."),
    "vendor_connection_lost": ("failed", "The connection to the vendor broke; retries gave up."),
    "vendor_server_error": ("failed", "The vendor answered 5xx; retries gave up."),
}
"""Every ``error.code`` an event can carry. Codes of transient errors end a
command as ``failed`` only once retries give up (``details.gave_up``)."""

ALSO_FAILED = frozenset({"invalid_payload"})
"""Rejection codes a command can also end ``failed`` with: a check a handler makes at run time
(on the account's settings: an upload URL off the allow-list, a path outside ``upload_dir``,
a file with no valid row) cannot reject, since the command is already claimed; it ends
``failed``, its code kept, and is stored like any outcome."""

TRACE_HEADERS: dict[str, Any] = {
    "title": "trace headers",
    "type": "object",
    "description": "AMQP headers. W3C trace context is carried across the bus (or in `meta.traceparent`).",
    "properties": {
        "traceparent": {"type": "string", "description": "W3C traceparent of the publisher's span."},
        "tracestate": {"type": "string", "description": "W3C tracestate."},
    },
}


def build_document(registry: Registry) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document for every command type in ``registry``."""
    commands = sorted(registry.commands.values(), key=lambda spec: spec.type)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    component_schemas: dict[str, Any] = {
        "command": _embed(schemas.load("command"), "command", "command envelope"),
        "event": _embed(schemas.load("event"), "event", "event envelope"),
        "rejection_code": _code_schema("rejected"),
        "failure_code": _code_schema("failed"),
        "trace_headers": TRACE_HEADERS,
    }
    messages: dict[str, Any] = {}
    for spec in commands:
        component_schemas[f"{spec.type}_payload"] = _embed(
            schemas.load(spec.schema), f"{spec.type}_payload", f"{spec.type} payload"
        )
        component_schemas[f"{spec.type}_command"] = _command_schema(spec.type)
        messages[f"command.{spec.type}"] = _command_message(spec)
        channels[f"command.{spec.type}"] = _command_channel(spec)
        statuses = event_statuses(spec)
        for status in statuses:
            component_schemas[f"{spec.type}_{status}_event"] = _event_schema(spec.type, status)
            messages[f"event.{spec.type}.{status}"] = _event_message(spec.type, status)
        channels[f"events.{spec.type}"] = _event_channel(spec.type, statuses)
        operations[f"send_{spec.type}"] = _send_operation(spec, statuses)
        operations[f"receive_{spec.type}_events"] = _receive_operation(spec.type, statuses)
    component_schemas["invalid_rejected_event"] = _event_schema("invalid", "rejected")
    messages["event.invalid.rejected"] = _event_message("invalid", "rejected")
    channels["events.invalid"] = _invalid_channel()
    operations["receive_invalid_events"] = _receive_operation("invalid", ["rejected"])
    channels.update(_queue_channels(registry))
    return {
        "asyncapi": "3.0.0",
        "id": f"urn:switchboard:asyncapi:{schemas.VERSION}",
        "info": _info(),
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": f"The RabbitMQ broker the worker consumes from (vhost {VHOST!r}).",
                "variables": {
                    "host": {"default": "localhost:5672", "description": "host:port of the broker."}
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": component_schemas, "messages": messages},
    }


def render(registry: Registry) -> str:
    """The document as ``docs/asyncapi.json`` holds it."""
    return json.dumps(build_document(registry), indent=2, sort_keys=True) + "\n"


def event_statuses(spec: CommandSpec) -> list[str]:
    """The statuses a command type's events can have.

    ``progress`` when its handler may return :class:`Continue` (it says so in
    its return annotation); ``deferred`` when it names a recipient, which is
    what quiet hours defer on.
    """
    statuses = list(TERMINAL_STATUSES)
    if "Continue" in str(inspect.get_annotations(spec.handler).get("return", "")):
        statuses.append("progress")
    if spec.recipient is not None:
        statuses.append("deferred")
    return statuses


def _info() -> dict[str, Any]:
    return {
        "title": "Switchboard",
        "version": schemas.VERSION,
        "description": (
            "SMS vendor commands (Peerly, Pidj) over RabbitMQ. Publish one command to the topic exchange "
            f"`{topology.COMMANDS_EXCHANGE}` with routing key = its `type` (persistent, content type "
            "application/json, AMQP message_id = `id` or unset); the worker validates it against these "
            "schemas, runs it at most once per (`account`, `id`), and publishes one terminal event "
            f"(`succeeded`, `failed` or `rejected`) to `{topology.EVENTS_EXCHANGE}` with routing key "
            "`<type>.<status>`, and to the command's `reply_to` queue when set. Publishing the same command "
            "again with the same `id` republishes the stored event instead of acting twice."
        ),
        "license": {"name": "MIT"},
    }


def _embed(schema: dict[str, Any], name: str, title: str) -> dict[str, Any]:
    """A schema file made readable in place at ``#/components/schemas/<name>``.

    Its ``title`` becomes ``title`` (code generators name the type after it:
    ``SendTextPayload``, not ``SendTextRoundleftPidjPost...``); the file's own
    title and ``$id`` are kept as ``x-schema-title`` and ``x-schema-id``.
    """
    embedded = _rewrite(schema, f"#/components/schemas/{name}")
    assert isinstance(embedded, dict)
    for keyword in ("$schema", "$id"):
        embedded.pop(keyword, None)
    if "$id" in schema:
        embedded["x-schema-id"] = schema["$id"]
    if "title" in schema:
        embedded["x-schema-title"] = schema["title"]
    embedded["title"] = title
    return embedded


_DATA_KEYWORDS = frozenset({"const", "default", "enum", "examples"})
"""Keywords whose values are instances, not schemas: left as they are."""
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
"""Keywords whose values map names (which may be anything, even "enum") to schemas."""


def _rewrite(node: Any, base: str) -> Any:
    """``node`` (a schema, or a list of them) with local references resolved under ``base``."""
    if isinstance(node, list):
        return [_rewrite(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DATA_KEYWORDS or key == "$ref" or not isinstance(value, dict | list):
            rewritten[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            rewritten[key] = {name: _rewrite(schema, base) for name, schema in value.items()}
        else:
            rewritten[key] = _rewrite(value, base)
    reference = rewritten.get("$ref")
    if not isinstance(reference, str):
        return rewritten
    if reference.startswith("#"):
        reference = base + reference[1:]
    siblings = {key: value for key, value in rewritten.items() if key != "$ref"}
    if siblings:
        # draft 07 ignores the siblings of $ref; 2020-12 applies them: allOf applies them in both.
        return {"allOf": [{"$ref": reference}], **siblings}
    return {"$ref": reference}


def codes_of(status: str) -> list[str]:
    """The codes an event of ``status`` may carry (sorted)."""
    extra = ALSO_FAILED if status == "failed" else frozenset()
    return sorted(code for code, (where, _) in ERROR_CODES.items() if where == status or code in extra)


def _code_schema(status: str) -> dict[str, Any]:
    codes = codes_of(status)
    descriptions = [ERROR_CODES[code][1] for code in codes]
    listing = "\n".join(f"- `{code}`: {text}" for code, text in zip(codes, descriptions, strict=True))
    return {
        "type": "string",
        "title": "rejection code" if status == "rejected" else "failure code",
        "description": f"`error.code` of a `{status}` event:\n\n{listing}",
        "enum": codes,
        "x-enum-descriptions": descriptions,
    }


def _command_schema(command_type: str) -> dict[str, Any]:
    return _specialise(
        "command",
        title=f"{command_type} command",
        description=f"The command envelope with type `{command_type}` and its payload: what you publish.",
        narrow={"type": {"const": command_type}},
        replace={"payload": {"$ref": f"#/components/schemas/{command_type}_payload"}},
    )


def _specialise(
    envelope: str,
    *,
    title: str,
    description: str,
    narrow: dict[str, dict[str, Any]],
    replace: dict[str, dict[str, Any]],
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The envelope schema file with some properties narrowed (keywords added) or replaced.

    A flat copy rather than ``allOf[envelope, refinement]``: code generators
    turn a flat schema into one typed model, while ``allOf`` leaves them a
    loose map for ``payload``.
    """
    schema = _embed(schemas.load(envelope), envelope, title)
    for key in ("x-schema-id", "x-schema-title"):
        schema.pop(key, None)
    schema["description"] = description
    for name, keywords in narrow.items():
        schema["properties"][name] = {**schema["properties"][name], **keywords}
    schema["properties"].update(replace)
    schema["required"] = [*schema["required"], *(name for name in required if name not in schema["required"])]
    return schema


def _command_message(spec: CommandSpec) -> dict[str, Any]:
    safety = (
        "Safe to repeat."
        if spec.safe_to_repeat
        else "Unsafe to repeat: after an interrupted attempt the worker does not run it blindly again "
        "(the event may be `failed` with `outcome_unknown`)."
    )
    message: dict[str, Any] = {
        "name": spec.type,
        "title": f"{spec.type} command",
        "summary": spec.description or spec.type,
        "description": f"Handled by {spec.vendor}. {safety}",
        "contentType": "application/json",
        "correlationId": {
            "description": "The command id; events carry it as `command_id` (and as the AMQP correlation_id).",
            "location": "$message.payload#/id",
        },
        "headers": {"$ref": "#/components/schemas/trace_headers"},
        "payload": {"$ref": f"#/components/schemas/{spec.type}_command"},
        "tags": [{"name": spec.vendor}],
        "bindings": {"amqp": {"bindingVersion": AMQP_BINDING_VERSION}},
    }
    if spec.example is not None:
        message["examples"] = [
            {
                "name": "example",
                "payload": {"id": f"{spec.type}-0001", "type": spec.type, "payload": spec.example},
            }
        ]
    return message


def _event_schema(command_type: str, status: str) -> dict[str, Any]:
    """The event envelope with ``type`` and ``status`` fixed, and what that status requires."""
    replace: dict[str, dict[str, Any]] = {}
    required: tuple[str, ...] = ("result",) if status in ("succeeded", "progress", "deferred") else ()
    if status in ("failed", "rejected"):
        code = "failure_code" if status == "failed" else "rejection_code"
        error = copy.deepcopy(schemas.load("event")["properties"]["error"])
        error["title"] = "failure" if status == "failed" else "rejection"
        error["properties"]["code"] = {"$ref": f"#/components/schemas/{code}"}
        replace["error"], required = error, ("error",)
    return _specialise(
        "event",
        title=f"{command_type} {status} event",
        description=f"The event envelope with type `{command_type}` and status `{status}`.",
        narrow={"type": {"const": command_type}, "status": {"const": status}},
        replace=replace,
        required=required,
    )


def _event_message(command_type: str, status: str) -> dict[str, Any]:
    routing_key = f"{command_type}.{status}"
    about = (
        "A message that could not be read as a command (or whose type could not be read)."
        if command_type == "invalid"
        else f"An event about a `{command_type}` command."
    )
    return {
        "name": routing_key,
        "title": f"{routing_key} event",
        "summary": f"{about} {STATUS_DESCRIPTIONS[status]}",
        "contentType": "application/json",
        "correlationId": {"description": "The command's id.", "location": "$message.payload#/command_id"},
        "headers": {"$ref": "#/components/schemas/trace_headers"},
        "payload": {"$ref": f"#/components/schemas/{command_type}_{status}_event"},
        "bindings": {"amqp": {"messageType": routing_key, "bindingVersion": AMQP_BINDING_VERSION}},
    }


def _exchange_binding(name: str) -> dict[str, Any]:
    exchange = _exchange(name)
    binding: dict[str, Any] = {
        "is": "routingKey",
        "exchange": {
            "name": name,
            "type": exchange.kind,
            "durable": True,
            "autoDelete": False,
            "vhost": VHOST,
        },
        "bindingVersion": AMQP_BINDING_VERSION,
    }
    if exchange.arguments:
        binding["x-exchange-arguments"] = exchange.arguments
    return {"amqp": binding}


def _exchange(name: str) -> topology.Exchange:
    for exchange in topology.build({}).exchanges:
        if exchange.name == name:
            return exchange
    raise KeyError(name)


def _command_channel(spec: CommandSpec) -> dict[str, Any]:
    return {
        "address": spec.type,
        "title": f"{spec.type} commands",
        "description": (
            f"Routing key `{spec.type}` on `{topology.COMMANDS_EXCHANGE}`; routed to "
            f"`{topology.vendor_queue(spec.vendor)}`."
        ),
        "messages": {spec.type: {"$ref": f"#/components/messages/command.{spec.type}"}},
        "bindings": _exchange_binding(topology.COMMANDS_EXCHANGE),
    }


def _event_channel(command_type: str, statuses: list[str]) -> dict[str, Any]:
    return {
        "address": f"{command_type}.{{status}}",
        "title": f"{command_type} events",
        "description": (
            f"Routing key `{command_type}.<status>` on `{topology.EVENTS_EXCHANGE}`; bind your own queue "
            f"with `{command_type}.*` (or `*.failed`, `#`, ...)."
        ),
        "parameters": {"status": {"enum": statuses, "description": "The event's status."}},
        "messages": {
            status: {"$ref": f"#/components/messages/event.{command_type}.{status}"} for status in statuses
        },
        "bindings": _exchange_binding(topology.EVENTS_EXCHANGE),
    }


def _invalid_channel() -> dict[str, Any]:
    return {
        "address": "invalid.rejected",
        "title": "unreadable commands",
        "description": (
            f"Routing key `invalid.rejected` on `{topology.EVENTS_EXCHANGE}`: a message that is not a readable "
            "command (not JSON, no valid `type`). A readable command of an unknown type is rejected with "
            "`unknown_type` under `<its type>.rejected` instead."
        ),
        "messages": {"rejected": {"$ref": "#/components/messages/event.invalid.rejected"}},
        "bindings": _exchange_binding(topology.EVENTS_EXCHANGE),
    }


def _send_operation(spec: CommandSpec, statuses: list[str]) -> dict[str, Any]:
    return {
        "action": "send",
        "title": f"Publish a {spec.type} command",
        "summary": spec.description or spec.type,
        "channel": {"$ref": f"#/channels/command.{spec.type}"},
        "messages": [{"$ref": f"#/channels/command.{spec.type}/messages/{spec.type}"}],
        "tags": [{"name": spec.vendor}],
        "bindings": {"amqp": {"deliveryMode": PERSISTENT, "bindingVersion": AMQP_BINDING_VERSION}},
        "reply": {
            "channel": {"$ref": f"#/channels/events.{spec.type}"},
            "messages": [{"$ref": f"#/channels/events.{spec.type}/messages/{status}"} for status in statuses],
        },
    }


def _receive_operation(command_type: str, statuses: list[str]) -> dict[str, Any]:
    channel = f"events.{command_type}"
    return {
        "action": "receive",
        "title": f"Receive {command_type} events",
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{status}"} for status in statuses],
    }


def _queue_channels(registry: Registry) -> dict[str, Any]:
    """The vendor queues, switchboard.unrouted and switchboard.dead, as the worker declares them."""
    vendor_types: dict[str, Iterable[str]] = {
        vendor: registry.types_of(vendor) for vendor in registry.vendors
    }
    vendors = {topology.vendor_queue(vendor): vendor for vendor in vendor_types}
    about = {
        topology.UNROUTED_QUEUE: "Commands whose routing key no vendor queue binds; the worker rejects them (`unknown_type`).",
        topology.DEAD_QUEUE: (
            "The original message of every failed or rejected command, with `x-switchboard-dead-*` headers "
            "(`switchboard dlq list|show|replay`)."
        ),
    }
    channels: dict[str, Any] = {}
    for queue in topology.build(vendor_types).queues:
        if queue.name in vendors:
            vendor = vendors[queue.name]
            description = (
                f"The {vendor} commands; the worker consumes them. Arguments as declared with the default "
                "settings (SWITCHBOARD_DELIVERY_LIMIT sets x-delivery-limit)."
            )
            messages = {t: {"$ref": f"#/components/messages/command.{t}"} for t in vendor_types[vendor]}
        elif queue.name in about:
            description, messages = about[queue.name], {}
        else:
            continue  # delay queues: the worker's own retries, nothing to publish or read
        channels[f"queue.{queue.name}"] = {
            "address": queue.name,
            "title": queue.name,
            "description": description,
            "messages": messages,
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": queue.name,
                        "durable": True,
                        "exclusive": False,
                        "autoDelete": False,
                        "vhost": VHOST,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                    "x-queue-arguments": queue.arguments,
                    "x-bound-to": [
                        {"exchange": exchange, "routingKey": key} for exchange, key, _ in queue.bindings
                    ],
                }
            },
        }
    return channels


def main() -> None:
    from handlers import build_registry

    sys.stdout.write(render(build_registry()))


if __name__ == "__main__":
    main()
