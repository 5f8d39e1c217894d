"""Users and SSO: get/create/update/delete/recover/pause/unpause a user, an SSO URL.

``create_user`` is unsafe to repeat (a second call hits 'duplicate username'
and Pidj has no lookup by username to reconcile with). The others converge
on the same state when repeated: update/delete/recover/pause/unpause set a
state, ``get_user`` and ``create_sso_url`` change nothing.
"""

from __future__ import annotations

from typing import Any

from handlers.pidj import rules
from handlers.pidj.client import build_form, path_segment
from handlers.pidj.common import PidjContext, status_of
from worker.registry import Commands

commands = Commands()

USER_ID = "us:a33a8313-8uq7-25aq-366z-49332atkelb2"
_FIELDS = (
    "username",
    "password",
    "phone_number",
    "email_address",
    "first_name",
    "last_name",
    "roles",
    "groups",
    "timezone",
    "external_id",
)


def _user_path(user_id: str, suffix: str = "") -> str:
    return f"/user/{path_segment(user_id)}{suffix}"


def _check_user_fields(payload: dict[str, Any]) -> dict[str, Any]:
    checked = dict(payload)
    rules.optional(checked, ["phone_number"], rules.e164)
    rules.optional(checked, ["email_address"], rules.email)
    rules.optional(checked, ["timezone"], rules.timezone)
    if checked.get("roles") is not None:
        checked["roles"] = rules.roles(checked["roles"])
    if checked.get("groups") is not None:
        checked["groups"] = rules.group_refs(checked["groups"])
    return checked


def check_create_user(payload: dict[str, Any]) -> dict[str, Any]:
    """E.164 phone, IANA time zone, roles from admin/manager/agent, group ids or names."""
    return _check_user_fields(payload)


def check_user_id(payload: dict[str, Any]) -> dict[str, Any]:
    """``id`` is a user id (``us:...``)."""
    rules.prefixed_id(payload.get("id"), "user", "id")
    return payload


def check_update_user(payload: dict[str, Any]) -> dict[str, Any]:
    """A user id plus the create fields (but username)."""
    return _check_user_fields(check_user_id(payload))


@commands.command(
    "get_user",
    safe_to_repeat=True,
    check=check_user_id,
    example={"id": USER_ID},
)
async def get_user(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Retrieve a user record (GET /user/{id})."""
    body = await ctx.client.get("/user/{id}", path=_user_path(payload["id"]))
    return status_of(body, "user")


@commands.command(
    "create_user",
    safe_to_repeat=False,
    check=check_create_user,
    example={
        "username": "jdoe",
        "password": "correct horse battery staple",
        "first_name": "John",
        "last_name": "Doe",
        "email_address": "john.doe@example.com",
        "phone_number": "+18015551111",
        "roles": ["agent"],
        "groups": ["Primary"],
        "timezone": "America/Denver",
        "external_id": "emp-42",
    },
)
async def create_user(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Create a user record (POST /user); a duplicate username is refused by Pidj."""
    body = await ctx.client.post("/user", build_form({key: payload.get(key) for key in _FIELDS}))
    return status_of(body, "id")


@commands.command(
    "update_user",
    safe_to_repeat=True,
    check=check_update_user,
    example={"id": USER_ID, "roles": ["agent", "manager"], "timezone": "America/Chicago"},
)
async def update_user(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Update a user record (PUT /user/{id}); a blank field clears it."""
    form = build_form({key: payload.get(key) for key in _FIELDS if key != "username"})
    body = await ctx.client.put("/user/{id}", form, path=_user_path(payload["id"]))
    return status_of(body) | {"id": payload["id"]}


def _state_command(name: str, method: str, suffix: str, doc: str, *keys: str) -> None:
    """The user commands that take only an id and set a state (safe to repeat)."""

    async def handler(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
        check_user_id(payload)
        endpoint = "/user/{id}" + suffix
        body = await ctx.client.call(method, endpoint, path=_user_path(payload["id"], suffix), form={})
        return status_of(body, *keys) | {"id": payload["id"]}

    handler.__doc__ = doc
    handler.__name__ = handler.__qualname__ = name
    commands.command(name, safe_to_repeat=True, check=check_user_id, example={"id": USER_ID})(handler)


_state_command(
    "delete_user", "DELETE", "", "Delete a user record (DELETE /user/{id}); recover_user undoes it."
)
_state_command(
    "recover_user", "PUT", "/recover", "Recover (un-delete) a user record (PUT /user/{id}/recover)."
)
_state_command(
    "pause_user", "POST", "/pause", "Pause a user: no new conversations (POST /user/{id}/pause).", "paused"
)
_state_command("unpause_user", "POST", "/unpause", "Un-pause a user (POST /user/{id}/unpause).", "paused")


def check_create_sso_url(payload: dict[str, Any]) -> dict[str, Any]:
    """Exactly one of user_uuid/external_id; ``next`` Base64 of a full URL (or ``next_url`` plain)."""
    checked = dict(payload)
    if rules.exactly_one(checked, "user_uuid", "external_id") == "user_uuid":
        rules.prefixed_id(checked["user_uuid"], "user", "user_uuid")
    checked["next"] = rules.next_url(checked)
    checked.pop("next_url", None)
    return checked


@commands.command(
    "create_sso_url",
    safe_to_repeat=True,
    check=check_create_sso_url,
    example={"user_uuid": USER_ID, "next_url": "https://gopidj.com/inbox"},
    # Pidj: "The URL expires in 60 seconds"; 5 s less, so a replayed URL is not handed out dying.
    result_expires_after_seconds=55.0,
)
async def create_sso_url(payload: dict[str, Any], ctx: PidjContext) -> dict[str, Any]:
    """Generate a single sign-on URL for a user (POST /sso/url); it expires in 60 seconds."""
    fields = {key: payload.get(key) for key in ("user_uuid", "external_id", "next")}
    body = await ctx.client.post("/sso/url", build_form(fields))
    return status_of(body, "url") | {"expires_in_seconds": 60}
