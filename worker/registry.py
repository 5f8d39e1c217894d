"""The one registry: command type -> (vendor, payload schema, handler, safety).

The runtime looks every command up here and knows nothing else of vendors.
Each vendor package exports one :class:`Vendor` (its account settings, how to
build its client, its simulator, its webhooks and its commands); the
composition root (``handlers.VENDORS``) lists them and :class:`Registry`
is built from that list, once, explicitly. A duplicate vendor or command type
fails there. Nothing is registered by importing a module.

Command modules declare their commands on a module-level :class:`Commands`
collector, without naming the vendor: the vendor object that lists them adds
it. This module imports nothing of the worker's server side at run time, so a
publisher can load the command declarations (their ``check``) to validate
with them (see ``worker.client``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import aiohttp.web
    import structlog
    from pydantic import BaseModel

    from worker.store.base import Deduper, SuppressionList
    from worker.vendor_http import VendorHTTP

ClientT = TypeVar("ClientT")
ClientT_co = TypeVar("ClientT_co", bound="VendorClient", covariant=True)
VendorClientT = TypeVar("VendorClientT", bound="VendorClient")

Payload = dict[str, Any]
Result = dict[str, Any]


@dataclass(frozen=True)
class Continue:
    """A handler's answer "not finished yet: call me again later".

    The runtime stores ``state``, publishes ``<type>.progress`` with
    ``progress`` when given, and redelivers the command through a broker delay
    queue after ``after_seconds``; no worker slot is held meanwhile. The next
    call sees ``ctx.state == state``. Continuation steps must be safe to
    repeat (polls), whatever the command's first step is, or check
    ``ctx.resumed`` before doing something unsafe again.
    """

    state: dict[str, Any]
    after_seconds: float
    progress: dict[str, Any] | None = None


@dataclass
class CommandContext(Generic[ClientT]):
    """What a handler may use: never the AMQP message itself."""

    command_id: str
    type: str
    account: str
    attempt: int
    meta: dict[str, Any]
    client: ClientT
    log: structlog.typing.FilteringBoundLogger
    first_attempt_at: datetime
    suppressions: SuppressionList
    state: dict[str, Any] | None = None
    resumed: bool = False
    """True when an earlier run of this very step stopped part-way (its worker
    died and the lease expired): whatever that run sent may have taken effect."""


Handler = Callable[[Payload, CommandContext[Any]], Awaitable[Result | Continue]]
HandlerT = TypeVar("HandlerT", bound=Handler)
Check = Callable[[Payload], Payload]
Reconcile = Callable[[Payload, CommandContext[Any]], Awaitable[Result | None]]


class VendorClient(Protocol):
    """What the runtime needs of a vendor client: a way to close it."""

    async def close(self) -> None: ...


class ClientFactory(Protocol[ClientT_co]):
    """Builds one account's client on a ready ``VendorHTTP`` (shared session,
    metrics, rate limit, timeout) whose ``base_url`` is the account's."""

    def __call__(self, account: Any, http: VendorHTTP) -> ClientT_co: ...


@dataclass(frozen=True)
class Sandbox:
    """A running vendor simulator and the account settings that point at it."""

    account: Mapping[str, Any]
    stop: Callable[[], Awaitable[None]]


class EventPublisher(Protocol):
    """Publishes one event to ``switchboard.events``; returns once the broker confirmed."""

    async def __call__(self, routing_key: str, event: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class WebhookContext:
    """What a vendor's inbound webhook app may use."""

    accounts: Mapping[str, BaseModel]
    publish: EventPublisher
    suppressions: SuppressionList
    deduper: Deduper
    log: structlog.typing.FilteringBoundLogger
    publish_timeout_seconds: float = 10.0
    """A publish not confirmed within this is abandoned: the webhook answers 503 (the vendor retries)."""


@dataclass(frozen=True)
class Command:
    """One command type as its module declares it (the vendor is added by the vendor object).

    ``safe_to_repeat`` is False when running the first step twice could repeat
    a side effect (a text sent, a job created): such a command is never run
    again blindly after a crash or an ambiguous vendor error.
    ``check`` runs after schema validation for rules JSON Schema cannot say
    (phone number validity, normalisation); it raises ``InvalidPayload``.
    ``reconcile`` asks the vendor whether an earlier attempt took effect;
    it returns the result when it did, ``None`` when it did not.
    """

    type: str
    schema: str
    handler: Handler
    safe_to_repeat: bool
    check: Check | None = None
    reconcile: Reconcile | None = None
    max_attempts: int | None = None
    max_age_seconds: float | None = None
    recipient: Callable[[Payload], str | None] | None = None
    """For commands that text someone: the E.164 number, so quiet hours can apply."""
    description: str = ""
    example: Payload = field(default_factory=dict)
    result_expires_after_seconds: float | None = None
    """How long a succeeded result stays usable (a login URL valid 60 s). A repeated command
    whose stored result is older is run again when ``safe_to_repeat``; otherwise its stored
    event is republished with ``result_expired: true``."""

    def of(self, vendor: str) -> CommandSpec:
        return CommandSpec(vendor=vendor, **{f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class CommandSpec(Command):
    """A registered command: its declaration and the vendor whose queue it goes to."""

    vendor: str = field(kw_only=True)


class Commands:
    """One module's command declarations, in a plain list: declaring registers nothing anywhere.

    ::

        commands = Commands()

        @commands.command("send_text", safe_to_repeat=False, check=rules.check_send_text)
        async def send_text(payload: Payload, ctx: CommandContext[PidjClient]) -> Result: ...

    The vendor object lists its modules' collectors (``commands=(*messages.commands, ...)``).
    """

    def __init__(self) -> None:
        self._declared: list[Command] = []

    def __iter__(self) -> Iterator[Command]:
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def command(
        self,
        type: str,
        *,
        safe_to_repeat: bool,
        schema: str | None = None,
        check: Check | None = None,
        reconcile: Reconcile | None = None,
        max_attempts: int | None = None,
        max_age_seconds: float | None = None,
        recipient: Callable[[Payload], str | None] | None = None,
        example: Payload | None = None,
        result_expires_after_seconds: float | None = None,
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator: declare ``handler`` as the one for command ``type``."""

        def declare(handler: HandlerT) -> HandlerT:
            self._declared.append(
                Command(
                    type=type,
                    schema=schema or type,
                    handler=handler,
                    safe_to_repeat=safe_to_repeat,
                    check=check,
                    reconcile=reconcile,
                    max_attempts=max_attempts,
                    max_age_seconds=max_age_seconds,
                    recipient=recipient,
                    description=(handler.__doc__ or "").strip().split("\n")[0],
                    example=example or {},
                    result_expires_after_seconds=result_expires_after_seconds,
                )
            )
            return handler

        return declare


@dataclass(frozen=True)
class Vendor(Generic[VendorClientT]):
    """A vendor as the runtime sees it: one object per vendor package.

    ``account_model`` validates one account's settings (from
    ``SWITCHBOARD_<VENDOR>_<FIELD>`` for the default account, or the accounts
    TOML file); it must have a ``base_url: str`` field. ``make_client``
    builds one client per account; ``start_sandbox`` starts the built-in
    simulator and returns the account settings that point at it.
    """

    name: str
    account_model: type[BaseModel]
    make_client: ClientFactory[VendorClientT]
    commands: Sequence[Command] = ()
    start_sandbox: Callable[[], Awaitable[Sandbox]] | None = None
    webhook_app: Callable[[WebhookContext], aiohttp.web.Application] | None = None
    """Mounted at ``/webhooks/<vendor>/`` when webhooks are enabled."""


class DuplicateRegistration(ValueError):
    """Two vendors with one name, or two commands with one type: the registry cannot choose."""


class Registry:
    """Command types and vendors, built once from the composition root's list of vendors."""

    def __init__(self, vendors: Iterable[Vendor[Any]] = ()) -> None:
        self.commands: dict[str, CommandSpec] = {}
        self.vendors: dict[str, Vendor[Any]] = {}
        for vendor in vendors:
            self.add(vendor)

    def add(self, vendor: Vendor[Any]) -> None:
        """Add a vendor and its commands; a name or type already taken raises, adding nothing."""
        if vendor.name in self.vendors:
            raise DuplicateRegistration(f"vendor {vendor.name!r} is registered twice")
        specs = [command.of(vendor.name) for command in vendor.commands]
        seen: set[str] = set()
        for spec in specs:
            if spec.type in self.commands or spec.type in seen:
                owner = self.commands[spec.type].vendor if spec.type in self.commands else vendor.name
                raise DuplicateRegistration(
                    f"command type {spec.type!r} is registered twice ({owner} and {vendor.name})"
                )
            seen.add(spec.type)
        self.vendors[vendor.name] = vendor
        self.commands.update((spec.type, spec) for spec in specs)

    def types_of(self, vendor: str) -> list[str]:
        return sorted(t for t, spec in self.commands.items() if spec.vendor == vendor)
