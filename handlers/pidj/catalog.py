"""Groups, series, surveys and the authorization check.

``subscribe_series`` and ``initiate_survey`` text someone at once and are
unsafe to repeat (a second call could subscribe twice or restart the survey;
Pidj has no lookup to reconcile with). Both are refused for an opted-out
recipient before Pidj is called. The lists and the check are reads.
"""

from __future__ import annotations

from typing import Any

from handlers.pidj import rules
from handlers.pidj.client import build_form
from handlers.pidj.common import PidjContext, recipient_number, refuse_contact_if_opted_out, status_of
from worker.registry import Commands

commands = Commands()

SERIES_ID = "ts:z81de899-207k-8ej4-ba5q-046zb73gte74"
SURVEY_ID = "sv:z81de899-207k-8ej4-ba5q-046zb73gte74"
GROUP_ID = "gr:04207209-7f61-5801-a3bd-958ecff19f77"


def _check_addressing(payload: dict[str, Any]) -> dict[str, Any]:
    """Exactly one of contact_id/to_number and one of from_number/group_id, each checked."""
    checked = dict(payload)
    if rules.exactly_one(checked, "contact_id", "to_number") == "to_number":
        checked["to_number"] = rules.e164(checked["to_number"], "to_number")
    else:
        rules.prefixed_id(checked["contact_id"], "contact", "contact_id")
    if rules.exactly_one(checked, "from_number", "group_id") == "from_number":
        checked["from_number"] = rules.e164(checked["from_number"], "from_number")
    else:
        rules.prefixed_id(checked["group_id"], "group", "group_id")
    return checked


def check_subscribe_series(payload: dict[str, Any]) -> dict[str, Any]:
    """A series id (ts:...), an IANA time zone (REQUIRED in the document), and the two either/or pairs."""
    checked = _check_addressing(payload)
    rules.prefixed_id(checked.get("series_id"), "series", "series_id")
    rules.timezone(checked.get("timezone"), "timezone")
    return checked


def check_initiate_survey(payload: dict[str, Any]) -> dict[str, Any]:
    """A survey id (sv:...) and the two either/or pairs."""
    checked = _check_addressing(payload)
    rules.prefixed_id(checked.get("survey_id"), "survey", "survey_id")
    return checked


_ADDRESSING = ("contact_id", "to_number", "from_number", "group_id")


@commands.command(
    "subscribe_series",
    safe_to_repeat=False,
    recipient=recipient_number,
    check=check_subscribe_series,
    example={
        "series_id": SERIES_ID,
        "timezone": "America/Denver",
        "to_number": "+18885553333",
        "group_id": GROUP_ID,
    },
)
async def subscribe_series(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Subscribe a contact or number to a series, starting now (POST /series/subscribe)."""
    await refuse_contact_if_opted_out(ctx, payload)
    fields = ("series_id", "timezone", *_ADDRESSING)
    body = await ctx.client.post("/series/subscribe", build_form({key: payload.get(key) for key in fields}))
    return status_of(body)


@commands.command(
    "initiate_survey",
    safe_to_repeat=False,
    recipient=recipient_number,
    check=check_initiate_survey,
    example={
        "survey_id": SURVEY_ID,
        "contact_id": "co:193a8313-kuq7-25aq-366z-49332azkelb2",
        "group_id": GROUP_ID,
    },
)
async def initiate_survey(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Start a survey with a contact or number: intro text and first question now (POST /survey/initiate)."""
    await refuse_contact_if_opted_out(ctx, payload)
    fields = ("survey_id", *_ADDRESSING)
    body = await ctx.client.post("/survey/initiate", build_form({key: payload.get(key) for key in fields}))
    return status_of(body)


@commands.command("list_groups", safe_to_repeat=True, example={})
async def list_groups(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """List all active groups, with their numbers (GET /groups)."""
    return status_of(await ctx.client.get("/groups"), "groups")


@commands.command("list_series", safe_to_repeat=True, example={})
async def list_series(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """List all active series and their groups (GET /series)."""
    return status_of(await ctx.client.get("/series"), "series")


@commands.command("list_surveys", safe_to_repeat=True, example={})
async def list_surveys(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """List all surveys (GET /surveys)."""
    return status_of(await ctx.client.get("/surveys"), "surveys")


@commands.command("check_authorization", safe_to_repeat=True, example={})
async def check_authorization(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Verify the account key and token (GET /authorization-check)."""
    return status_of(await ctx.client.get("/authorization-check"))
