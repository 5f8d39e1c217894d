"""What the Pidj command modules share: the context type, opt-out checks, results."""

from __future__ import annotations

from typing import Any

from handlers.pidj import rules
from handlers.pidj.client import PidjClient, path_segment
from worker.errors import InvalidPayload, PermanentError, TransientError
from worker.registry import CommandContext

VENDOR = "pidj"
PidjContext = CommandContext[PidjClient]


async def refuse_if_opted_out(ctx: PidjContext, number: str, field: str) -> None:
    """End the command ``recipient_opted_out`` when ``number`` is on the suppression list.

    Called before anything that texts a person, so that Pidj is never asked to.
    When the list cannot be read, nothing is sent: the command is retried later.
    """
    try:
        suppressed = await ctx.suppressions.contains(ctx.account, number)
    except Exception as exc:  # the shared store is down: never text without knowing
        raise TransientError(
            "the suppression list cannot be read; nothing was sent",
            code="suppression_list_unavailable",
            maybe_applied=False,
        ) from exc
    if suppressed:
        ctx.log.info("pidj.recipient_opted_out", field=field)
        # Imported here: publishers load this module (for its checks) without the worker's metrics.
        from worker.metrics import SUPPRESSED

        SUPPRESSED.labels(ctx.type).inc()
        raise PermanentError(
            "the recipient opted out; nothing was sent",
            code="recipient_opted_out",
            details={"field": field},
        )


async def contact_number(ctx: PidjContext, contact_id: str) -> str | None:
    """The E.164 number of a contact (GET /contact/{id}, safe to repeat), if it has one."""
    try:
        body = await ctx.client.get("/contact/{id}", path=f"/contact/{path_segment(contact_id)}")
    except TransientError as exc:
        # Only a read failed: nothing was sent, so even an unsafe command may be retried.
        exc.maybe_applied = False
        raise
    contact = body.get("contact")
    if not isinstance(contact, dict):
        return None
    for key in ("phone_number", "phone"):
        value = contact.get(key)
        if isinstance(value, str) and value:
            try:
                return rules.e164(value, key)
            except InvalidPayload:  # a number Pidj stored that we cannot read: check it as it is
                return value
    return None


async def refuse_contact_if_opted_out(ctx: PidjContext, payload: dict[str, Any]) -> None:
    """Opt-out check for commands addressed by ``to_number`` or ``contact_id``."""
    if payload.get("to_number"):
        await refuse_if_opted_out(ctx, payload["to_number"], "to_number")
        return
    number = await contact_number(ctx, payload["contact_id"])
    if number is not None:
        await refuse_if_opted_out(ctx, number, "contact_id")


def status_of(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The result of a command: Pidj's ``status`` and ``message`` and the named fields."""
    result: dict[str, Any] = {"status": body.get("status")}
    if "message" in body:
        result["message"] = body["message"]
    for key in keys:
        if key in body:
            result[key] = body[key]
    return result


def recipient_number(payload: dict[str, Any]) -> str | None:
    """The number a texting command reaches, for quiet hours (None when addressed by contact id)."""
    number = payload.get("to_number")
    return number if isinstance(number, str) else None
