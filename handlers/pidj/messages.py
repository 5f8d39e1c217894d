"""Messages and tasks: ``send_text`` (POST /send), ``initiate_task`` (POST /task/initiate).

Both are unsafe to repeat: every call sends a text or opens a task, and Pidj
offers no way to look up whether an earlier attempt did (no reconcile hook).
"""

from __future__ import annotations

import functools
from typing import Any

from handlers import segments
from handlers.pidj import rules
from handlers.pidj.client import build_form
from handlers.pidj.common import VENDOR, PidjContext, recipient_number, refuse_if_opted_out, status_of
from worker.registry import Commands

commands = Commands()


@functools.cache
def _sms_segments() -> Any:
    """The segments counter, imported on first use: publishers load this module (for its
    checks) without the worker's metrics. Once: an import statement costs ~0.8 us a call."""
    from worker.metrics import SMS_SEGMENTS

    return SMS_SEGMENTS


def check_send_text(payload: dict[str, Any]) -> dict[str, Any]:
    """E.164 numbers, exactly one of from_number/group_id, 1,600 characters unless truncation is accepted.

    With ``replace_lookalikes`` the text's typographic look-alikes (curly quotes,
    dashes, ...) become their GSM-7 equivalents first, so the limit applies to
    what is sent.
    """
    checked = dict(payload)
    if checked.get("replace_lookalikes") and isinstance(checked.get("text_body"), str):
        checked["text_body"] = segments.to_gsm(checked["text_body"])
    checked["to_number"] = rules.e164(checked.get("to_number"), "to_number")
    if rules.exactly_one(checked, "from_number", "group_id") == "from_number":
        checked["from_number"] = rules.e164(checked["from_number"], "from_number")
    else:
        rules.prefixed_id(checked["group_id"], "group", "group_id")
    rules.text_body(checked.get("text_body", ""), bool(checked.get("allow_truncation", False)))
    return checked


@commands.command(
    "send_text",
    safe_to_repeat=False,
    recipient=recipient_number,
    check=check_send_text,
    example={"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "Your order is ready."},
)
async def send_text(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Send one text message from one of the account's groups (POST /send)."""
    await refuse_if_opted_out(ctx, payload["to_number"], "to_number")
    form = build_form(
        {
            "to_number": payload["to_number"],
            "from_number": payload.get("from_number"),
            "group_id": payload.get("group_id"),
            "text_body": payload["text_body"],
        }
    )
    cost = segments.analyse(payload["text_body"][: rules.MAX_TEXT_BODY])
    warning = segments.ucs2_warning(payload["text_body"], cost)
    if warning is not None:
        ctx.log.warning("text forced to UCS-2", **warning)
    body = await ctx.client.post("/send", form)
    _sms_segments().labels(VENDOR, cost.encoding).inc(cost.segments)
    result = status_of(body)
    result["encoding"] = cost.encoding
    result["segments"] = cost.segments
    result["to_number"] = payload["to_number"]
    for key in ("from_number", "group_id"):
        if payload.get(key):
            result[key] = payload[key]
    result["truncated"] = len(payload["text_body"]) > rules.MAX_TEXT_BODY
    return result


def check_initiate_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Channel ``ticket``, a group id, plain-text topic within 3,200 characters, E.164 phone."""
    checked = dict(payload)
    rules.optional(checked, ["group_id"], lambda value, field: rules.prefixed_id(value, "group", field))
    rules.optional(checked, ["topic"], lambda value, field: rules.no_html(value, field, rules.MAX_TOPIC))
    rules.optional(checked, ["phone_number"], rules.e164)
    rules.optional(checked, ["email_address"], rules.email)
    return checked


@commands.command(
    "initiate_task",
    safe_to_repeat=False,
    check=check_initiate_task,
    example={
        "channel": "ticket",
        "group_id": "gr:04207209-7f61-5801-a3bd-958ecff19f77",
        "subject": "Call back about the invoice",
        "topic": "Customer asked for a copy of invoice 1042.",
        "name": "John Doe",
        "phone_number": "+18015551111",
    },
)
async def initiate_task(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Create and start a task (an interaction) in a channel (POST /task/initiate)."""
    fields = ("channel", "group_id", "subject", "topic", "name", "email_address", "phone_number")
    body = await ctx.client.post("/task/initiate", build_form({key: payload.get(key) for key in fields}))
    return status_of(body, "task")
