"""Publish commands to Switchboard from another Python service.

::

    from worker.client import Switchboard

    text = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "Hi"}
    with Switchboard("amqp://publisher:secret@rabbitmq:5672/switchboard") as sb:
        sb.send("send_text", text, id="order-42-ready")
        event = sb.call("send_text", text, id="order-42-shipped")  # the terminal event
        sb.commands.send_text(**text, id="order-42-delivered")

``send`` publishes one command to ``switchboard.commands`` (routing key = the
command type) as a persistent JSON message with ``message_id`` = the command
id, waits for the broker's publisher confirm, and retries on connection loss.
A retry may deliver the command twice; the worker runs each id once, so
choose ids that name the *intent* (``order-42-confirmation``), not the try.

``call`` does the same with ``reply_to`` set to the client's own exclusive,
auto-deleted reply queue and waits for the terminal event (``succeeded``,
``failed`` or ``rejected``) whose ``correlation_id`` is the command id. If the
connection drops while it waits, it reconnects and publishes the same command
again to the new reply queue: the worker answers a repeat with the stored
event and does not call the vendor twice. A ``CallTimeout`` does not cancel
anything: the command may still run; its event is on ``switchboard.events``.

Before anything is published, the command is checked with the worker's own
validator (:mod:`worker.validation`: ``schemas/v1/command.json``, the
payload's ``schemas/v1/payloads/<type>.json``, then the command's ``check``
from its vendor's declaration, e.g. phone number validity), so a typo fails
here with the same code, field path (``InvalidPayload.path ==
"/payload/to_number"``) and message as the ``rejected`` event the worker would
have published.

Installing ``switchboard`` (without the ``worker`` extra) is enough for this
module: it needs none of the worker's server, store, metrics or tracing
packages. OpenTelemetry is used when the calling service has it.

Typed helpers (``sb.commands.<type>(**fields)``) are built from the schemas
when first used, not generated into a module: the schemas installed with this
package are the ones the worker validates with, so there is no second copy to
drift out of date and no generated module to regenerate when a vendor team
adds or changes a schema. The price is that mypy cannot see the fields; each helper has
a real ``inspect.Signature`` (so ``help()``, IDEs at run time and misspelled
keywords fail like an ordinary function call) and its values are checked
against the schema on every call. ``tests/client`` checks every schema's
helper against it.

Each publish is a ``publish switchboard.commands`` OpenTelemetry producer
span whose W3C ``traceparent`` travels in the AMQP headers, so the worker's
spans join the caller's trace (a no-op without an SDK in the caller).

A ``Switchboard`` holds one AMQP connection; its methods take a lock, so
threads may share one but their calls run one at a time. Use one per thread
(or a pool) for concurrency.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import itertools
import keyword
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import kombu
import orjson
from amqp.exceptions import MessageNacked  # type: ignore[import-untyped]  # py-amqp: kombu's transport

try:  # part of the worker extra; a publisher without it publishes without spans
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind
except ImportError:
    _TRACING = False
else:
    _TRACING = True

import schemas
from worker.brokers import broker_urls
from worker.registry import Check, Registry
from worker.validation import Validators

# kombu ships a py.typed marker but most of its API is unannotated: strict mypy
# would flag every call, so the client reaches it through ``Any``.
_kombu: Any = kombu

__all__ = [
    "COMMANDS_EXCHANGE",
    "CallTimeout",
    "CommandHelper",
    "Commands",
    "PublishError",
    "Switchboard",
]

COMMANDS_EXCHANGE: Final = "switchboard.commands"
TERMINAL_STATUSES: Final = frozenset({"succeeded", "failed", "rejected"})
# Reconnect for ~20 s in total before giving up on a publish.
DEFAULT_RETRY_POLICY: Final[Mapping[str, float]] = {
    "max_retries": 6,
    "interval_start": 0.2,
    "interval_step": 1.0,
    "interval_max": 5.0,
}
# Envelope options of the helpers; a payload field with one of these names
# is passed with a trailing underscore (``id_=...``).
_ENVELOPE_OPTIONS: Final = ("id", "account", "meta", "timeout", "on_event")

Event = dict[str, Any]
EventCallback = Callable[[Event], None]


class PublishError(Exception):
    """The broker did not take the command (nacked, unroutable, connection lost for good)."""

    def __init__(self, message: str, *, command_id: str) -> None:
        super().__init__(message)
        self.command_id = command_id


class CallTimeout(TimeoutError):
    """No terminal event in time. The command may still run: nothing was cancelled."""

    def __init__(self, message: str, *, command_id: str) -> None:
        super().__init__(message)
        self.command_id = command_id


class Switchboard:
    """A publisher of Switchboard commands over one AMQP connection.

    Parameters:
        url: ``amqp://user:password@host:port/vhost``; for a cluster, a list of
            URLs or one string of comma-separated addresses (see :mod:`worker.brokers`).
        validate: check envelope and payload against the schemas before publishing.
        payload_schemas: command type -> payload schema; default: the installed
            ``schemas`` package and the commands' checks (tests pass their own).
        registry: the commands to validate against; default: every vendor's
            (``handlers.build_registry()``).
        retry_policy: kombu ``ensure`` policy for connection loss.
        confirm_timeout: seconds to wait for the broker's publisher confirm.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        validate: bool = True,
        payload_schemas: Mapping[str, dict[str, Any]] | None = None,
        retry_policy: Mapping[str, float] | None = None,
        confirm_timeout: float = 10.0,
        exchange: str = COMMANDS_EXCHANGE,
        registry: Registry | None = None,
    ) -> None:
        # Several nodes (a list, or SWITCHBOARD_AMQP_URL's comma-separated form): kombu
        # fails over between them, in random order so publishers spread over the cluster.
        urls = broker_urls(url) if isinstance(url, str) else [u for each in url for u in broker_urls(each)]
        self._conn: Any = _kombu.Connection(
            urls if len(urls) > 1 else urls[0],
            failover_strategy="shuffle",
            transport_options={"confirm_publish": True},
        )
        self._validator = _Validator(payload_schemas, registry) if validate else None
        self._retry_policy = dict(DEFAULT_RETRY_POLICY if retry_policy is None else retry_policy)
        self._confirm_timeout = confirm_timeout
        self._exchange = exchange
        self._lock = threading.RLock()
        self._returned: set[str] = set()
        self._producer: Any = _kombu.Producer(self._conn, auto_declare=False, on_return=self._on_return)
        self._reply_queue: str | None = None
        self._reply_consumer: Any = None
        self._reply_connection: Any = None  # the AMQP connection the reply queue lives on
        self._waiting: _Waiter | None = None
        self.commands = Commands(self, payload_schemas)

    # -- public API ---------------------------------------------------------

    def send(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        id: str | None = None,
        account: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish one command and return its id once the broker confirmed it.

        Raises:
            CommandRejected / InvalidPayload: the command breaks its schema (nothing published).
            PublishError: the broker refused it or stayed unreachable.
        """
        envelope = self._envelope(type, payload, id=id, account=account, meta=meta)
        with self._lock:
            self._publish(envelope, reply_to=None)
        command_id: str = envelope["id"]
        return command_id

    def call(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        id: str | None = None,
        account: str | None = None,
        meta: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        on_event: EventCallback | None = None,
    ) -> Event:
        """Publish one command and return its terminal event (the whole event dict).

        ``on_event`` receives non-terminal events (progress, deferred) if the
        worker sends any to ``reply_to``. A ``failed`` or ``rejected`` outcome
        is returned, not raised: look at ``event["status"]``.

        Raises:
            CommandRejected / InvalidPayload: as for ``send``.
            PublishError: as for ``send``.
            CallTimeout: no terminal event within ``timeout`` seconds.
        """
        envelope = self._envelope(type, payload, id=id, account=account, meta=meta)
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting = _Waiter(envelope["id"], on_event)
            try:
                self._publish_with_reply_queue(envelope)
                return self._wait(envelope, deadline)
            finally:
                self._waiting = None

    def close(self) -> None:
        """Close the connection (the reply queue goes with it)."""
        with self._lock:
            self._reply_consumer = None
            self._reply_queue = None
            self._reply_connection = None
            self._conn.release()

    def __enter__(self) -> Switchboard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- building and checking ---------------------------------------------

    def _envelope(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        id: str | None,
        account: str | None,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "id": str(uuid.uuid4()) if id is None else id,
            "type": type,
            "payload": dict(payload),
            "issued_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if account is not None:
            envelope["account"] = account
        if meta is not None:
            envelope["meta"] = dict(meta)
        if self._validator is not None:
            self._validator.check(envelope)
        return envelope

    # -- publishing ---------------------------------------------------------

    def _publish(self, envelope: dict[str, Any], *, reply_to: str | None) -> None:
        command_id: str = envelope["id"]
        properties: dict[str, Any] = {"message_id": command_id, "timestamp": int(time.time())}
        if reply_to is not None:
            properties["reply_to"] = reply_to
            properties["correlation_id"] = command_id
        self._returned.discard(command_id)
        with _publish_span(self._exchange, envelope["type"], command_id) as headers:
            for nacks in itertools.count():
                try:
                    self._producer.publish(
                        orjson.dumps(envelope),
                        exchange=self._exchange,
                        routing_key=envelope["type"],
                        content_type="application/json",
                        content_encoding="utf-8",
                        delivery_mode=2,
                        mandatory=True,
                        retry=True,
                        retry_policy=self._retry_policy,
                        declare=[],
                        confirm_timeout=self._confirm_timeout,
                        headers=headers or None,
                        **properties,
                    )
                    break
                except MessageNacked as exc:
                    # A quorum queue electing a new leader (a cluster node just went) nacks
                    # for a moment; the same id again is safe: the worker runs each id once.
                    if nacks >= self._retry_policy.get("max_retries", 0):
                        raise PublishError(
                            f"command {command_id} was not published: the broker nacked it {nacks + 1}x",
                            command_id=command_id,
                        ) from exc
                    time.sleep(self._nack_pause(nacks))
                except Exception as exc:  # kombu raises library errors of many kinds; the caller needs one
                    raise PublishError(
                        f"command {command_id} was not published: {exc!r}", command_id=command_id
                    ) from exc
        if command_id in self._returned:
            self._returned.discard(command_id)
            raise PublishError(
                f"command {command_id} was returned unroutable: no queue is bound to "
                f"{self._exchange!r} for routing key {envelope['type']!r} (is the topology declared?)",
                command_id=command_id,
            )

    def _nack_pause(self, nacks: int) -> float:
        """Seconds before publishing a nacked command again (the retry policy's back-off)."""
        policy = self._retry_policy
        pause = policy.get("interval_start", 0.2) + nacks * policy.get("interval_step", 1.0)
        return float(min(pause, policy.get("interval_max", 5.0)))

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """Broker returned a mandatory message: remember it; ``_publish`` raises after the confirm."""
        message_id = message.properties.get("message_id")
        if isinstance(message_id, str):
            self._returned.add(message_id)

    # -- waiting for the answer ----------------------------------------------

    def _ensure_reply_queue(self) -> str:
        """Declare (once per connection) a server-named exclusive reply queue and consume it."""
        self._conn.ensure_connection(**self._retry_policy)
        if self._reply_queue is None or self._reply_connection is not self._conn.connection:
            channel = self._conn.channel()
            queue = _kombu.Queue("", exclusive=True, auto_delete=True, durable=False)
            consumer = _kombu.Consumer(channel, queues=[queue], no_ack=True, on_message=self._on_reply)
            consumer.consume()
            self._reply_consumer = consumer
            self._reply_connection = self._conn.connection
            self._reply_queue = str(consumer.queues[0].name)
        return self._reply_queue

    def _publish_with_reply_queue(self, envelope: dict[str, Any]) -> None:
        """Publish with ``reply_to``; if the publish itself had to reconnect, the queue named in it
        died with the old connection: publish again (same id) naming a new one."""
        for _ in range(3):
            try:
                reply_to = self._ensure_reply_queue()
            except Exception as exc:  # kombu's connection errors, after its retry policy
                raise PublishError(
                    f"command {envelope['id']} was not published: {exc!r}", command_id=envelope["id"]
                ) from exc
            self._publish(envelope, reply_to=reply_to)
            if self._reply_connection is self._conn.connection:
                return
        raise PublishError(
            f"command {envelope['id']} was published but the connection keeps dropping; its event is "
            "on switchboard.events",
            command_id=envelope["id"],
        )

    def _on_reply(self, message: Any) -> None:
        waiter = self._waiting
        if waiter is None or message.properties.get("correlation_id") != waiter.command_id:
            return  # the answer to a call that already gave up
        try:
            event = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if event.get("status") in TERMINAL_STATUSES:
            waiter.event = event
        elif waiter.on_event is not None:
            waiter.on_event(event)

    def _wait(self, envelope: dict[str, Any], deadline: float) -> Event:
        waiter = self._waiting
        assert waiter is not None
        while waiter.event is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(
                    f"no terminal event for command {waiter.command_id} in time; it may still run",
                    command_id=waiter.command_id,
                )
            try:
                self._conn.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                continue
            except self._conn.connection_errors:
                self._reconnect_and_republish(envelope)
        return waiter.event

    def _reconnect_and_republish(self, envelope: dict[str, Any]) -> None:
        """The reply queue died with the connection: make a new one and ask again (same id)."""
        self._conn.collect()
        self._reply_consumer = None
        self._reply_queue = None
        self._producer.revive(self._conn)
        self._publish_with_reply_queue(envelope)


@contextlib.contextmanager
def _publish_span(exchange: str, routing_key: str, command_id: str) -> Iterator[dict[str, str]]:
    """A ``publish <exchange>`` producer span, and the W3C trace headers that let the worker join it.

    Without an OpenTelemetry SDK in the calling service this costs nothing and
    yields no headers; with one, the worker's ``process`` span continues the
    caller's trace.
    """
    attributes = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "publish",
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": command_id,
    }
    if not _TRACING:
        yield {}
        return
    tracer = trace.get_tracer("switchboard.client")
    with tracer.start_as_current_span(f"publish {exchange}", kind=SpanKind.PRODUCER, attributes=attributes):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers


class _Waiter:
    """The one ``call`` in progress: its id, callback and, once here, its terminal event."""

    def __init__(self, command_id: str, on_event: EventCallback | None) -> None:
        self.command_id = command_id
        self.on_event = on_event
        self.event: Event | None = None


class _SchemaSource:
    """Payload schemas by command type: a given mapping, or the installed ``schemas`` package."""

    def __init__(self, payload_schemas: Mapping[str, dict[str, Any]] | None) -> None:
        self._given = payload_schemas

    def names(self) -> list[str]:
        return sorted(self._given) if self._given is not None else schemas.payload_names()

    def get(self, type: str) -> dict[str, Any] | None:
        if self._given is not None:
            return self._given.get(type)
        try:
            return schemas.load(type)
        except KeyError:
            return None


class _Validator:
    """The worker's own checks (:class:`worker.validation.Validators` and each command's
    ``check``), in the worker's order: a command that fails here would be rejected by the
    worker with the same code, path and message.

    The vendors' command declarations are loaded at the first check, not when the client is
    made (importing every vendor's modules takes a moment)."""

    def __init__(
        self, payload_schemas: Mapping[str, dict[str, Any]] | None, registry: Registry | None
    ) -> None:
        self._registry = registry
        self._checks: dict[str, Check | None] = {}
        self._validators: Validators | None = (
            None if payload_schemas is None else Validators.of_schemas(dict(payload_schemas))
        )

    def _load(self) -> Validators:
        registry = self._registry
        if registry is None:
            from handlers import build_registry  # the composition root: every vendor's commands

            registry = build_registry()
        self._checks = {t: spec.check for t, spec in registry.commands.items()}
        return Validators(list(registry.commands), {t: spec.schema for t, spec in registry.commands.items()})

    def check(self, envelope: dict[str, Any]) -> None:
        if self._validators is None:
            self._validators = self._load()
        self._validators.check_envelope(envelope)
        self._validators.check_type(envelope["type"])
        self._validators.check_payload(
            envelope["type"], envelope["payload"], self._checks.get(envelope["type"])
        )


# -- typed helpers ------------------------------------------------------------

_PYTHON_TYPES: Final[Mapping[str, Any]] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
}


class CommandHelper:
    """One command type as a function whose keyword arguments are the payload fields.

    ``helper(**fields)`` sends, ``helper.call(**fields)`` waits for the terminal
    event, ``helper.payload(**fields)`` only builds the payload dict. A field
    passed as ``None`` is left out. Envelope options (``id``, ``account``,
    ``meta``; ``timeout``, ``on_event`` for ``call``) are keywords too.
    """

    def __init__(self, client: Switchboard, type: str, schema: Mapping[str, Any]) -> None:
        self.type = type
        self.schema = schema
        self._client = client
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        self.fields: dict[str, str] = {_python_name(name): name for name in properties}
        """Python keyword -> schema property name."""
        self.fields_by_schema_name: dict[str, str] = {name: python for python, name in self.fields.items()}
        parameters = [
            inspect.Parameter(
                python,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if name in required else None,
                annotation=_annotation(properties[name]),
            )
            for python, name in self.fields.items()
        ]
        parameters.sort(key=lambda p: p.default is not inspect.Parameter.empty)
        self.__signature__ = inspect.Signature(parameters, return_annotation=str)
        self.__name__ = type
        self.__doc__ = _helper_doc(type, schema, self.fields)

    def payload(self, **fields: Any) -> dict[str, Any]:
        """The payload for these fields (names checked here, values by the schema on send)."""
        unknown = [name for name in fields if name not in self.fields]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{self.type}() got an unexpected keyword argument {unknown[0]!r}{hint}")
        self.__signature__.bind(**{k: v for k, v in fields.items() if v is not None})
        return {self.fields[k]: v for k, v in fields.items() if v is not None}

    def __call__(
        self,
        *,
        id: str | None = None,
        account: str | None = None,
        meta: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        return self._client.send(self.type, self.payload(**fields), id=id, account=account, meta=meta)

    def call(
        self,
        *,
        id: str | None = None,
        account: str | None = None,
        meta: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        on_event: EventCallback | None = None,
        **fields: Any,
    ) -> Event:
        """Send and wait for the terminal event (see ``Switchboard.call``)."""
        return self._client.call(
            self.type,
            self.payload(**fields),
            id=id,
            account=account,
            meta=meta,
            timeout=timeout,
            on_event=on_event,
        )

    def __repr__(self) -> str:
        return f"<command {self.type}{self.__signature__}>"


class Commands:
    """``client.commands.<type>``: a ``CommandHelper`` for each command type with a schema."""

    def __init__(self, client: Switchboard, payload_schemas: Mapping[str, dict[str, Any]] | None) -> None:
        self._client = client
        self._source = _SchemaSource(payload_schemas)
        self._helpers: dict[str, CommandHelper] = {}

    def __getattr__(self, type: str) -> CommandHelper:
        if type.startswith("_"):
            raise AttributeError(type)
        helper = self._helpers.get(type)
        if helper is None:
            schema = self._source.get(type)
            if schema is None:
                raise AttributeError(f"no command type {type!r} (known: {', '.join(self._source.names())})")
            helper = self._helpers[type] = CommandHelper(self._client, type, schema)
        return helper

    def __dir__(self) -> list[str]:
        return self._source.names()

    def __iter__(self) -> Iterator[CommandHelper]:
        return (getattr(self, name) for name in self._source.names())


def _python_name(field: str) -> str:
    if keyword.iskeyword(field) or field in _ENVELOPE_OPTIONS:
        return field + "_"
    return field


def _annotation(schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    if isinstance(kind, str):
        return _PYTHON_TYPES.get(kind, Any)
    return Any


def _helper_doc(type: str, schema: Mapping[str, Any], fields: Mapping[str, str]) -> str:
    lines = [str(schema.get("title") or f"Send a {type} command."), ""]
    if schema.get("description"):
        lines += [str(schema["description"]), ""]
    properties: Mapping[str, Any] = schema.get("properties", {})
    for python, name in fields.items():
        lines.append(f"{python}: {properties[name].get('description', '')}".rstrip())
    return "\n".join(lines)
