"""Inbound Pidj webhooks -> ``pidj.webhook.<event>`` events on ``switchboard.events``.

Mounted by the runtime at ``/webhooks/pidj/`` (``switchboard run`` with
webhooks enabled, or ``switchboard webhooks``); it needs only a
:class:`WebhookContext`. Routes::

    POST /webhooks/pidj/{account}/{secret}     the form Pidj's settings can hold (a URL)
    POST /webhooks/pidj/{account}              secret in the X-Switchboard-Secret header

Answers: 401 unknown account / wrong or missing secret (nothing published),
413 body over 256 KiB, 400 not JSON (or form) / no ``event`` string / nested
deeper than the event encoder accepts (checked at parse time: such a body
could never be published, so 503 would make Pidj retry it forever),
503 when the broker did not confirm within ``publish_timeout_seconds``
(``SWITCHBOARD_WEBHOOK_PUBLISH_TIMEOUT_SECONDS``, 10 s; Pidj retries), 200 once it did.

Order of one delivery, and why:

1. authenticate (constant-time compare), read at most ``MAX_BODY_BYTES``, validate;
2. claim the dedupe key (sha256 of account + raw body) with ``first_time``;
   a key already claimed is a retry of a delivery we took: 200, nothing published;
3. opt-out / opt-in: update the suppression list (before we answer 2xx, so an
   opt-out is on the list before Pidj believes we have it). An opt-out adds an
   entry with source ``pidj.webhook`` and never takes over an entry already
   there; an opt-in removes only an entry with that source, so an operator's
   entry (CLI add/import, e.g. "legal hold") stays until an operator removes
   it. An opt-out with no number in any recognised field suppresses nobody:
   it is counted (``switchboard_webhook_opt_outs_without_number_total``),
   logged as an error with the field names seen, and published with
   ``"suppression": {"applied": false, ...}`` so a subscriber can act;
4. publish and wait for the broker's confirm;
5. remember the key for ``DEDUPE_TTL_SECONDS``; answer 200.

The claim is taken before publishing (not after) because ``first_time`` both
checks and marks: marking after publishing would mean publishing every retry
before learning it is one. So that a failed delivery is not mistaken for a
taken one, the deduper must be able to drop a key (:class:`ForgettingDeduper`):

- step 3 or 4 fails: the claim is forgotten and we answer 503, so Pidj's retry
  is processed as new;
- the worker dies between 2 and 5: the claim was taken for ``CLAIM_SECONDS``
  only, so Pidj's later retries are processed as new once it lapses;
- step 5 replaces the short claim by the long mark (forget, then first_time).

With a deduper that cannot forget, the claim is taken for the full TTL and a
failed delivery's retries are answered as duplicates (logged as an error).
Identical bodies within ``DEDUPE_TTL_SECONDS`` count as one delivery: the
document shows no delivery id to tell a retry from a repeat.

Events named without a body in the document (Interaction Closed, Consent
Given, Opt Out, Opt In) are read with the same envelope as the others: an
``event`` string plus the object concerned; unknown fields are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import orjson
import phonenumbers
from aiohttp import web

from worker.metrics import WEBHOOK_OPT_OUTS_WITHOUT_NUMBER, WEBHOOKS_RECEIVED
from worker.registry import WebhookContext

# The series exists at 0 from start-up: increase() cannot see a counter's first
# sample, so an alert on it would miss the first opt-out that suppressed nobody.
WEBHOOK_OPT_OUTS_WITHOUT_NUMBER.labels("pidj")

MAX_BODY_BYTES = 256 * 1024
DEDUPE_TTL_SECONDS = 15 * 60.0
"""Long enough for Pidj's retries of one delivery, short enough that a person texting
the same words twice is not folded into one event (bodies carry no delivery id)."""
CLAIM_SECONDS = 60.0
"""How long an unfinished delivery holds its key (a worker that died mid-delivery)."""
SECRET_HEADER = "X-Switchboard-Secret"
SOURCE = "pidj.webhook"
"""The ``source`` of suppression entries a webhook adds; an opt-in removes only these."""
OPT_OUT = "opt-out"
OPT_IN = "opt-in"
KNOWN_EVENTS = frozenset(
    {
        "contact-created",
        "contact-updated",
        "contact-deleted",
        "contact-restored",
        "text-received",
        "interaction-closed",
        "consent-given",
        OPT_OUT,
        OPT_IN,
    }
)
"""Named in the document; others are published too, but counted as ``other`` (bounded metric labels)."""
_CONTEXT = web.AppKey("pidj_webhook_context", WebhookContext)
_EVENT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_ACCOUNT = r"{account:[A-Za-z0-9_.-]{1,64}}"
_NOT_A_SECRET = secrets.token_urlsafe(32)
"""Compared against when an account is unknown, so timing does not tell which accounts exist."""


@runtime_checkable
class ForgettingDeduper(Protocol):
    """A deduper that can drop a key, so a failed delivery's retry is not a duplicate."""

    async def forget(self, key: str) -> None: ...


def webhook_app(ctx: WebhookContext) -> web.Application:
    """The Pidj webhook receiver, independent of the worker (only ``ctx`` is needed)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_CONTEXT] = ctx
    app.router.add_post(f"/{_ACCOUNT}", receive)
    app.router.add_post(f"/{_ACCOUNT}/{{secret}}", receive)
    return app


def _error(status: int, message: str, outcome: str) -> web.Response:
    WEBHOOKS_RECEIVED.labels("pidj", "unknown", outcome).inc()
    return web.json_response({"error": message}, status=status)


def _retry_later() -> web.Response:
    """503: Pidj retries a delivery that did not get a 2xx."""
    return web.json_response({"error": "not accepted; retry later"}, status=503, headers={"Retry-After": "5"})


def _count(name: str, outcome: str) -> None:
    WEBHOOKS_RECEIVED.labels("pidj", name if name in KNOWN_EVENTS else "other", outcome).inc()


async def receive(request: web.Request) -> web.Response:
    """One webhook delivery: authenticate, validate, dedupe, suppress, publish, answer."""
    ctx = request.app[_CONTEXT]
    account = request.match_info["account"]
    if not _authentic(ctx, account, request):
        ctx.log.warning("pidj.webhook.unauthorized", account=account)
        return _error(401, "unknown account or wrong secret", "unauthorized")
    raw = await _read_limited(request)
    if raw is None:
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes", "too_large")
    body = _parse(raw, request.content_type)
    if body is None:
        return _error(400, "body must be a JSON object (or a form) with an 'event' string", "invalid")
    if not _encodable(body):
        return _error(400, "body is nested too deeply to be published", "invalid")
    name = event_name(body.get("event"))
    if name is None:
        return _error(
            400, "'event' must be a non-empty string of letters, digits, '-', '_' or spaces", "invalid"
        )
    return await _deliver(ctx, account, name, body, raw)


async def _deliver(
    ctx: WebhookContext, account: str, name: str, body: dict[str, Any], raw: bytes
) -> web.Response:
    key = "pidj:webhook:" + hashlib.sha256(account.encode() + b"\n" + raw).hexdigest()
    log = ctx.log.bind(account=account, webhook_event=name)
    can_forget = isinstance(ctx.deduper, ForgettingDeduper)
    claim_seconds = CLAIM_SECONDS if can_forget else DEDUPE_TTL_SECONDS
    try:
        first = await ctx.deduper.first_time(key, time.time(), claim_seconds)
    except Exception as exc:  # the store is down: we cannot tell a retry from new, so ask for one later
        log.error("pidj.webhook.dedupe_unavailable", error=exc.__class__.__name__)
        _count(name, "not_published")
        return _retry_later()
    if not first:
        log.info("pidj.webhook.duplicate")
        _count(name, "duplicate")
        return web.json_response({"status": "duplicate"})
    event = {
        "event_id": str(uuid.uuid4()),
        "type": "pidj.webhook",
        "event": name,
        "account": account,
        "received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": body,
    }
    try:
        suppression = await _apply_consent(ctx, account, name, body)
        if suppression is not None:
            event["suppression"] = suppression
        # Bounded: a broker that never confirms must not hold Pidj's request (and our claim) open.
        async with asyncio.timeout(ctx.publish_timeout_seconds):
            await ctx.publish(f"pidj.webhook.{name}", event)
    except Exception as exc:  # any failure (timeout included): let Pidj retry rather than lose the delivery
        log.error("pidj.webhook.not_published", error=exc.__class__.__name__)
        await _forget(ctx, key)
        _count(name, "not_published")
        return _retry_later()
    log.info("pidj.webhook.published", event_id=event["event_id"])
    _count(name, "published")
    if can_forget:
        await _remember(ctx, key)
    return web.json_response({"status": "accepted", "event_id": event["event_id"]})


async def _forget(ctx: WebhookContext, key: str) -> None:
    """Drop a failed delivery's claim so that Pidj's retry is processed."""
    try:
        if isinstance(ctx.deduper, ForgettingDeduper):
            await ctx.deduper.forget(key)
            return
    except Exception as exc:  # the store is down too: the claim lapses after CLAIM_SECONDS
        ctx.log.error("pidj.webhook.claim_not_released", error=exc.__class__.__name__)
        return
    ctx.log.error("pidj.webhook.retry_will_be_dropped", reason="deduper cannot forget a key")


async def _remember(ctx: WebhookContext, key: str) -> None:
    """Turn the short claim of a published delivery into the long dedupe mark."""
    assert isinstance(ctx.deduper, ForgettingDeduper)
    try:
        await ctx.deduper.forget(key)
        await ctx.deduper.first_time(key, time.time(), DEDUPE_TTL_SECONDS)
    except Exception as exc:  # published already: answer 200; a retry may be published twice
        ctx.log.warning("pidj.webhook.not_remembered", error=exc.__class__.__name__)


def _authentic(ctx: WebhookContext, account: str, request: web.Request) -> bool:
    given = request.match_info.get("secret") or request.headers.get(SECRET_HEADER) or ""
    settings = ctx.accounts.get(account)
    configured = getattr(settings, "webhook_secret", None) if settings is not None else None
    expected = configured.get_secret_value() if configured is not None else _NOT_A_SECRET
    matches = hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
    return matches and configured is not None and bool(given)


async def _read_limited(request: web.Request) -> bytes | None:
    """The body, or None when it is (or says it is) larger than MAX_BODY_BYTES."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)


def _parse(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """A JSON object, or a form whose JSON-looking values (``contact={...}``) are decoded."""
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return None
        return {name: _maybe_json(value) for name, value in pairs}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _encodable(body: dict[str, Any]) -> bool:
    """Whether the body fits in an event: orjson refuses to encode deeper than 254 levels."""
    try:
        orjson.dumps({"event": {"data": body}})  # the body sits two levels down in the event
    except orjson.JSONEncodeError:
        return False
    return True


def _maybe_json(value: str) -> Any:
    if value.startswith(("{", "[")):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def event_name(value: Any) -> str | None:
    """The routing-key form of an event name: ``Opt Out`` / ``opt_out`` -> ``opt-out``."""
    if not isinstance(value, str):
        return None
    name = re.sub(r"[\s_]+", "-", value.strip().lower())
    return name if _EVENT_NAME.fullmatch(name) else None


def _dotted(body: dict[str, Any], path: str) -> Any:
    value: Any = body
    for part in path.strip().split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def person_number(body: dict[str, Any], extra_fields: str = "") -> str | None:
    """The E.164 number of the person an event is about (never ``phone_to``: that is our group).

    Looks first at the account's ``webhook_number_fields`` (dotted, comma-separated),
    then at the contact (``phone``, ``phone_number``), the text's ``phone_from``,
    and top-level ``phone_number`` / ``phone`` / ``phone_from`` / ``number``.
    """
    found = body.get("text")
    text: dict[str, Any] = found if isinstance(found, dict) else {}
    places: list[Any] = [_dotted(body, path) for path in extra_fields.split(",") if path.strip()]
    for holder in (body, text):
        contact = holder.get("contact")
        if isinstance(contact, dict):
            places += [contact.get("phone"), contact.get("phone_number")]
    places += [body.get("phone_number"), body.get("phone"), body.get("phone_from"), text.get("phone_from")]
    places.append(body.get("number"))
    for value in places:
        if isinstance(value, str) and value.strip():
            try:
                number = phonenumbers.parse(value, None)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_possible_number(number):
                formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                return formatted
    return None


def field_names(body: dict[str, Any], depth: int = 0) -> list[str]:
    """The field names of a body, nested ones dotted (``contact.phone``); for logs, never values."""
    names: list[str] = []
    for key, value in body.items():
        names.append(str(key))
        if isinstance(value, dict) and depth < 2:
            names += [f"{key}.{inner}" for inner in field_names(value, depth + 1)]
    return names[:50]


async def _apply_consent(
    ctx: WebhookContext, account: str, name: str, body: dict[str, Any]
) -> dict[str, Any] | None:
    """Opt-out puts the number on the suppression list; opt-in takes off what an opt-out put on.

    Returns what the event should say about the suppression list (None: not an opt-out/opt-in).
    """
    if name not in (OPT_OUT, OPT_IN):
        return None
    settings = ctx.accounts.get(account)
    number = person_number(body, getattr(settings, "webhook_number_fields", "") or "")
    if number is None:
        fields = field_names(body)
        if name == OPT_OUT:
            WEBHOOK_OPT_OUTS_WITHOUT_NUMBER.labels("pidj").inc()
        ctx.log.error("pidj.webhook.no_number", account=account, webhook_event=name, fields_seen=fields)
        return {"applied": False, "reason": "no_number", "fields_seen": fields}
    if name == OPT_OUT:
        await ctx.suppressions.add(
            account, number, reason="opt-out", source=SOURCE, now=time.time(), keep_existing=True
        )
        applied = True
    else:
        applied = await ctx.suppressions.remove(account, number, source=SOURCE)
        if not applied and await ctx.suppressions.contains(account, number):
            ctx.log.warning("pidj.webhook.opt_in_kept_operator_entry", account=account)
            return {"applied": False, "reason": "operator_entry_kept"}
    ctx.log.info("pidj.webhook.suppression_updated", account=account, webhook_event=name)
    return {"applied": applied}
