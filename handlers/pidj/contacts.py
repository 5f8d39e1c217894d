"""Contacts and consent.

Safe to repeat: ``create_contact`` ('if the phone number is currently on
record, nothing will be done'), ``update_contact`` and ``delete_contact``
(they set a state), ``send_consent_text`` ('can safely be called at any
point, and it will only send a consent request when appropriate'), and the
reads. ``send_consent_text`` texts the contact, so it is refused for an
opted-out number like the other commands that text someone.

The document's ``GET /contact_id}/{group_id}/check-consent`` is read as
``GET /contact/{contact_id}/{group_id}/check-consent`` (CHECK_CONSENT below).
"""

from __future__ import annotations

from typing import Any

from handlers.pidj import rules
from handlers.pidj.client import build_form, path_segment
from handlers.pidj.common import PidjContext, contact_number, refuse_if_opted_out, status_of
from worker.errors import VendorRejected
from worker.registry import Commands

commands = Commands()

CHECK_CONSENT = "/contact/{contact_id}/{group_id}/check-consent"
CONTACT_ID = "co:193a8313-kuq7-25aq-366z-49332azkelb2"
GROUP_ID = "gr:04207209-7f61-5801-a3bd-958ecff19f77"
ADDRESS_FIELDS = tuple(f"{kind}_{part}" for kind in rules.ADDRESS_KINDS for part in rules.ADDRESS_PARTS)
FIELDS = (
    "phone_number",
    "email_address",
    "first_name",
    "last_name",
    "business_name",
    "display_name",
    "group",
    "timezone",
    "external_id",
    *ADDRESS_FIELDS,
)


def _contact_path(contact_id: str) -> str:
    return f"/contact/{path_segment(contact_id)}"


def _check_fields(payload: dict[str, Any]) -> dict[str, Any]:
    checked = dict(payload)
    rules.optional(checked, ["phone_number"], rules.e164)
    rules.optional(checked, ["email_address"], rules.email)
    rules.optional(checked, ["timezone"], rules.timezone)
    rules.optional(checked, ["group"], rules.group_ref)
    rules.address_fields(checked)
    return checked


def check_create_contact(payload: dict[str, Any]) -> dict[str, Any]:
    """E.164 phone (required), IANA time zone, group id or name, address fields and their limits."""
    checked = _check_fields(payload)
    checked["phone_number"] = rules.e164(checked.get("phone_number"), "phone_number")
    return checked


def check_contact_id(payload: dict[str, Any]) -> dict[str, Any]:
    """``id`` is a contact id (``co:...``)."""
    rules.prefixed_id(payload.get("id"), "contact", "id")
    return payload


def check_update_contact(payload: dict[str, Any]) -> dict[str, Any]:
    """A contact id plus the create fields (but external_id)."""
    return _check_fields(check_contact_id(payload))


def check_by_phone(payload: dict[str, Any]) -> dict[str, Any]:
    """``phone_number`` in E.164."""
    return {**payload, "phone_number": rules.e164(payload.get("phone_number"), "phone_number")}


def check_consent_pair(payload: dict[str, Any]) -> dict[str, Any]:
    """``contact_id`` (co:...) and ``group_id`` (gr:...), both required."""
    rules.prefixed_id(payload.get("contact_id"), "contact", "contact_id")
    rules.prefixed_id(payload.get("group_id"), "group", "group_id")
    return payload


@commands.command("get_contact", safe_to_repeat=True, check=check_contact_id, example={"id": CONTACT_ID})
async def get_contact(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Get a contact record by id (GET /contact/{id})."""
    check_contact_id(payload)
    body = await ctx.client.get("/contact/{id}", path=_contact_path(payload["id"]))
    return status_of(body, "contact")


@commands.command(
    "get_contact_by_phone",
    safe_to_repeat=True,
    check=check_by_phone,
    example={"phone_number": "+18015551111"},
)
async def get_contact_by_phone(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Get a contact record by phone number (GET /contact/by-phone/{phone_number})."""
    path = f"/contact/by-phone/{path_segment(payload['phone_number'])}"
    body = await ctx.client.get("/contact/by-phone/{phone_number}", path=path)
    return status_of(body, "contact")


@commands.command(
    "create_contact",
    safe_to_repeat=True,
    check=check_create_contact,
    example={
        "phone_number": "+18015551111",
        "first_name": "John",
        "last_name": "Doe",
        "email_address": "john.doe@example.com",
        "group": "Primary",
        "timezone": "America/Denver",
        "home_street_1": "1 Main St",
        "home_postal": "84101",
    },
)
async def create_contact(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Create a contact (POST /contact); if the number is already on record Pidj changes nothing.

    The document shows no answer for a number already on record; when the answer
    has no ``id``, the contact is looked up by phone (GET /contact/by-phone) and
    the result says ``already_on_record: true``.
    """
    body = await ctx.client.post("/contact", build_form({key: payload.get(key) for key in FIELDS}))
    result = status_of(body, "id")
    if "id" not in body:
        path = f"/contact/by-phone/{path_segment(payload['phone_number'])}"
        found = await ctx.client.get("/contact/by-phone/{phone_number}", path=path)
        contact = found.get("contact")
        result["id"] = contact.get("id") if isinstance(contact, dict) else None
        result["already_on_record"] = True
    return result


@commands.command(
    "update_contact",
    safe_to_repeat=True,
    check=check_update_contact,
    example={"id": CONTACT_ID, "first_name": "Johnny", "business_city": "Denver", "business_state": "CO"},
)
async def update_contact(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Update a contact (PUT /contact/{id}); a blank field clears it."""
    form = build_form({key: payload.get(key) for key in FIELDS if key != "external_id"})
    body = await ctx.client.put("/contact/{id}", form, path=_contact_path(payload["id"]))
    return status_of(body) | {"id": payload["id"]}


@commands.command("delete_contact", safe_to_repeat=True, check=check_contact_id, example={"id": CONTACT_ID})
async def delete_contact(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Delete a contact permanently (DELETE /contact/{id})."""
    check_contact_id(payload)
    try:
        body = await ctx.client.delete("/contact/{id}", path=_contact_path(payload["id"]))
    except VendorRejected as exc:
        # A retry after an attempt that may have deleted it: gone is what was asked for.
        if exc.code == "not_found" and ctx.attempt > 1:
            return {"status": "success", "id": payload["id"], "already_deleted": True}
        raise
    return status_of(body) | {"id": payload["id"]}


@commands.command(
    "send_consent_text",
    safe_to_repeat=True,
    check=check_consent_pair,
    example={"contact_id": CONTACT_ID, "group_id": GROUP_ID},
)
async def send_consent_text(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Text a contact a consent request, when Pidj finds it appropriate (POST /contact/send-consent-text)."""
    check_consent_pair(payload)
    number = await contact_number(ctx, payload["contact_id"])
    if number is not None:
        await refuse_if_opted_out(ctx, number, "contact_id")
    form = build_form({"contact_id": payload["contact_id"], "group_id": payload["group_id"]})
    # 'Consent texts may report failure to send for a number of reasons' (not set up, already
    # requested ...): an expected outcome of a call that 'can safely be called at any point',
    # so it succeeds with sent=false and Pidj's reason. ``status: error`` and 4xx still fail.
    body = await ctx.client.post("/contact/send-consent-text", form, accept_failure=True)
    return status_of(body) | {"sent": body.get("status") == "success"}


@commands.command(
    "check_consent",
    safe_to_repeat=True,
    check=check_consent_pair,
    example={"contact_id": CONTACT_ID, "group_id": GROUP_ID},
)
async def check_consent(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Whether a contact must still consent to a group's texts (GET CHECK_CONSENT)."""
    check_consent_pair(payload)
    template = getattr(ctx.client.account, "check_consent_path", CHECK_CONSENT)
    path = template.format_map(
        {"contact_id": path_segment(payload["contact_id"]), "group_id": path_segment(payload["group_id"])}
    )
    body = await ctx.client.get(CHECK_CONSENT, path=path)
    return status_of(body, "needed")


@commands.command("list_contacts", safe_to_repeat=True, example={})
async def list_contacts(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """List all active contacts (GET /contacts)."""
    body = await ctx.client.get("/contacts")
    return status_of(body, "contacts")
