"""The Pidj simulator's endpoints, as functions of (state, form, path params).

Each returns an :class:`Answer`; side effects are reported through ``effect``
(``sandbox.py`` records them for tests). Behaviours follow the document:
a group without a number cannot send (HTTP 200, ``status: failure``), a
duplicate username is refused, creating a contact whose number exists changes
nothing, text over 1,600 characters is truncated.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from handlers.pidj.sandbox_state import (
    CONTACT_FIELDS,
    E164,
    ROLES,
    USER_FIELDS,
    Answer,
    Group,
    PidjState,
    bad_request,
    blank_contact,
    is_zone,
    new_id,
    ok,
    public_user,
    refused,
)

Effect = Callable[..., None]
Params = dict[str, str]
Form = dict[str, str]
Operation = Callable[[PidjState, Form, Params, Effect], Answer]
MAX_TEXT = 1600


def _unknown(form: Form, allowed: tuple[str, ...] | frozenset[str]) -> Answer | None:
    extra = sorted(set(form) - set(allowed))
    return bad_request(f"Unknown field(s): {', '.join(extra)}.") if extra else None


def _missing(form: Form, *required: str) -> Answer | None:
    absent = [name for name in required if not form.get(name)]
    return bad_request(f"Missing required field(s): {', '.join(absent)}.") if absent else None


def _checks(*answers: Answer | None) -> Answer | None:
    return next((answer for answer in answers if answer is not None), None)


# -- messages and tasks ---------------------------------------------------------
def send(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    problem = _checks(
        _unknown(form, ("to_number", "from_number", "group_id", "text_body")),
        _missing(form, "to_number", "text_body"),
    )
    if problem:
        return problem
    if not E164.fullmatch(form["to_number"]):
        return bad_request("to_number must be in E.164 format.")
    group = state.sender(form)
    if isinstance(group, Answer):
        return group
    text = form["text_body"]
    effect(
        "text",
        f"{form['to_number']}|{text[:MAX_TEXT]}",
        to_number=form["to_number"],
        from_number=group.phone_number,
        group_id=group.group_id,
        text_body=text[:MAX_TEXT],
        truncated=len(text) > MAX_TEXT,
    )
    return ok(message="Text sent.")


def task_initiate(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    fields = ("channel", "group_id", "subject", "topic", "name", "email_address", "phone_number")
    problem = _checks(_unknown(form, fields), _missing(form, "channel"))
    if problem:
        return problem
    if form["channel"] != "ticket":
        return bad_request("channel must be one of: ticket.")
    if form.get("group_id") and form["group_id"] not in state.groups:
        return refused("Group not found.")
    if len(form.get("topic", "")) > 3200:
        return bad_request("topic is longer than 3,200 characters.")
    if form.get("phone_number") and not E164.fullmatch(form["phone_number"]):
        return bad_request("phone_number must be in E.164 format.")
    task = new_id("ci")
    effect("task", f"{form.get('subject', '')}|{form.get('topic', '')}", task=task, **form)
    return ok(task=task)


# -- users ----------------------------------------------------------------------------
def _user_fields(state: PidjState, form: Form) -> Answer | None:
    if form.get("phone_number") and not E164.fullmatch(form["phone_number"]):
        return bad_request("phone_number must be in E.164 format.")
    if form.get("roles") and not set(form["roles"].split("|")) <= ROLES:
        return bad_request("roles must be a pipe-separated list of admin, manager, agent.")
    if form.get("timezone") and not is_zone(form["timezone"]):
        return bad_request("timezone must be an IANA time zone (case sensitive).")
    for ref in filter(None, form.get("groups", "").split("|")):
        if state.group_by_ref(ref) is None:
            return refused(f"Unknown group: {ref}.")
    return None


def _stored(form: Form, name: str) -> Any:
    value = form[name]
    return [item for item in value.split("|") if item] if name in ("roles", "groups") else value


def user_create(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    problem = _checks(
        _unknown(form, USER_FIELDS), _missing(form, "username", "password"), _user_fields(state, form)
    )
    if problem:
        return problem
    if any(user["username"] == form["username"] for user in state.users.values()):
        return refused("Username already exists; the user was not created.")
    user_id = new_id("us")
    user: dict[str, Any] = {name: "" for name in USER_FIELDS if name != "password"}
    user.update({"roles": [], "groups": [], "business_name": "", "display_name": ""})
    user.update({name: _stored(form, name) for name in form})
    user.update({"id": user_id, "deleted": False, "paused": False})
    state.users[user_id] = user
    effect("user_created", form["username"], id=user_id)
    return ok(id=user_id, message="User created.")


def user_get(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    user = state.live_user(params["id"])
    return ok(user=public_user(user)) if user else bad_request("User not found.", 404)


def user_update(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    allowed = tuple(name for name in USER_FIELDS if name != "username")
    problem = _checks(_unknown(form, allowed), _user_fields(state, form))
    if problem:
        return problem
    user = state.live_user(params["id"])
    if user is None:
        return bad_request("User not found.", 404)
    user.update({name: _stored(form, name) for name in form})
    effect("user_updated", params["id"], fields=sorted(form))
    return ok()


def user_delete(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    user = state.users.get(params["id"])
    if user is None:
        return bad_request("User not found.", 404)
    if not user["deleted"]:
        user["deleted"] = True
        effect("user_deleted", params["id"])
    return ok()


def user_recover(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    user = state.users.get(params["id"])
    if user is None:
        return bad_request("User not found.", 404)
    if user["deleted"]:
        user["deleted"] = False
        effect("user_recovered", params["id"])
    return ok()


def _pause(paused: bool) -> Callable[[PidjState, Form, Params, Effect], Answer]:
    def handler(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
        user = state.live_user(params["id"])
        if user is None:
            return bad_request("User not found.", 404)
        if user["paused"] != paused:  # 'only paused if they are not currently paused'
            user["paused"] = paused
            effect("user_paused" if paused else "user_unpaused", params["id"])
        return ok(paused=user["paused"])

    return handler


user_pause = _pause(True)
user_unpause = _pause(False)


def sso_url(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    problem = _unknown(form, ("user_uuid", "external_id", "next"))
    if problem:
        return problem
    if bool(form.get("user_uuid")) == bool(form.get("external_id")):
        return bad_request("Give user_uuid or external_id.")
    if form.get("next"):
        try:
            target = urlsplit(base64.b64decode(form["next"], validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return bad_request("next must be Base64 encoded.")
        if target.scheme not in ("http", "https") or not target.netloc:
            return bad_request("next must be a full http(s) URL.")
    users = [u for u in state.users.values() if not u["deleted"]]
    if form.get("user_uuid"):
        found = [u for u in users if u["id"] == form["user_uuid"]]
    else:
        found = [u for u in users if u.get("external_id") == form["external_id"]]
    if not found:
        return refused("User not found.")
    effect("sso_url", found[0]["id"], next=form.get("next", ""))
    return ok(url=f"https://gopidj.com/sso/{secrets.token_urlsafe(24)}")


# -- contacts -------------------------------------------------------------------------
def _contact_fields(state: PidjState, form: Form) -> tuple[Form, Answer | None]:
    """Checked fields; an unknown state or country is discarded, as the document says."""
    kept = dict(form)
    if kept.get("phone_number") and not E164.fullmatch(kept["phone_number"]):
        return kept, bad_request("phone_number must be in E.164 format.")
    if kept.get("timezone") and not is_zone(kept["timezone"]):
        return kept, bad_request("timezone must be an IANA time zone (case sensitive).")
    if kept.get("group") and state.group_by_ref(kept["group"]) is None:
        return kept, refused(f"Unknown group: {kept['group']}.")
    for name, value in form.items():
        if name.endswith(("_street_1", "_street_2", "_city")) and len(value) > 200:
            return kept, bad_request(f"{name} is longer than 200 characters.")
        if name.endswith("_state") and value and len(value) != 2:
            del kept[name]
        if name.endswith("_country") and value and len(value) not in (2, 3):
            del kept[name]
    return kept, None


def contact_create(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    problem = _checks(_unknown(form, CONTACT_FIELDS), _missing(form, "phone_number"))
    if problem:
        return problem
    kept, problem = _contact_fields(state, form)
    if problem:
        return problem
    existing = state.contact_by_phone(kept["phone_number"])
    if existing is not None:  # 'if the phone number is currently on record, nothing will be done'
        # The document shows no answer for this case: the standard success answer, no id
        # (docs/vendor-assumptions.md). The handler finds the id by phone.
        return ok()
    contact_id = new_id("co")
    contact = blank_contact(contact_id, kept["phone_number"])
    contact.update(kept)
    state.contacts[contact_id] = contact
    effect("contact_created", kept["phone_number"], id=contact_id)
    return ok(id=contact_id, message="Contact created.")


def contact_get(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    contact = state.contacts.get(params["id"])
    return ok(contact=contact) if contact else bad_request("Contact not found.", 404)


def contact_by_phone(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    if not E164.fullmatch(params["phone"]):
        return bad_request("phone_number must be in E.164 format.")
    contact = state.contact_by_phone(params["phone"])
    return ok(contact=contact) if contact else bad_request("Contact not found.", 404)


def contact_update(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    allowed = tuple(name for name in CONTACT_FIELDS if name != "external_id")
    problem = _unknown(form, allowed)
    if problem:
        return problem
    kept, problem = _contact_fields(state, form)
    if problem:
        return problem
    contact = state.contacts.get(params["id"])
    if contact is None:
        return bad_request("Contact not found.", 404)
    other = state.contact_by_phone(kept.get("phone_number") or "")
    if other is not None and other is not contact:
        return refused("Another contact has this phone number.")
    contact.update(kept)
    effect("contact_updated", params["id"], fields=sorted(kept))
    return ok()


def contact_delete(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    if state.contacts.pop(params["id"], None) is None:
        return bad_request("Contact not found.", 404)
    effect("contact_deleted", params["id"])
    return ok()


def _consent_pair(state: PidjState, contact_id: str, group_id: str) -> tuple[Group | None, Answer | None]:
    if not contact_id.startswith("co:") or not group_id.startswith("gr:"):
        return None, bad_request("contact_id must be co:... and group_id gr:....")
    if contact_id not in state.contacts:
        return None, bad_request("Contact not found.", 404)
    group = state.groups.get(group_id)
    return group, None if group else bad_request("Group not found.", 404)


def consent_send(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    problem = _checks(_unknown(form, ("contact_id", "group_id")), _missing(form, "contact_id", "group_id"))
    if problem:
        return problem
    group, problem = _consent_pair(state, form["contact_id"], form["group_id"])
    if problem or group is None:
        return problem or bad_request("Group not found.", 404)
    pair = (form["contact_id"], form["group_id"])
    if not group.consent_required:
        return refused("Text consent is not set up for this group.")
    if pair in state.consent_given or pair in state.consent_requested:
        return refused("Consent was already requested or given.")
    state.consent_requested.add(pair)
    number = state.contacts[form["contact_id"]]["phone_number"]
    effect("consent_text", "|".join(pair), to_number=number, group_id=form["group_id"])
    return ok()


def consent_check(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    group, problem = _consent_pair(state, params["contact_id"], params["group_id"])
    if problem or group is None:
        return problem or bad_request("Group not found.", 404)
    pair = (params["contact_id"], params["group_id"])
    if not group.consent_required:
        return ok(needed=False, message="Consent is not set up for this group.")
    if pair in state.consent_given:
        return ok(needed=False, message="Consent already given.")
    if pair in state.consent_requested:
        return ok(needed=False, message="Consent already requested.")
    return ok(needed=True)


def contacts_list(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    return ok(contacts=list(state.contacts.values()))


def groups_list(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    return ok(groups=[group.as_json() for group in state.groups.values()])


# -- series, surveys, authorization ----------------------------------------------------
def _campaign(state: PidjState, form: Form, fields: tuple[str, ...], required: str) -> Answer | Group:
    problem = _checks(_unknown(form, fields), _missing(form, required))
    if problem:
        return problem
    return state.sender(form)


def series_subscribe(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    fields = ("series_id", "timezone", "contact_id", "to_number", "from_number", "group_id")
    group = _campaign(state, form, fields, "series_id")
    if isinstance(group, Answer):
        return group
    if not form.get("timezone") or not is_zone(form["timezone"]):
        return bad_request("timezone is required and must be an IANA time zone (case sensitive).")
    series = state.series.get(form["series_id"])
    if series is None:
        return refused("Series not found.")
    if group.group_id not in series["groups"]:
        return refused("The group is not assigned to this series.")
    number = state.recipient(form)
    if isinstance(number, Answer):
        return number
    effect("series_subscription", f"{form['series_id']}|{number}", to_number=number, group_id=group.group_id)
    return ok(message="Series subscribe.")


def survey_initiate(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    fields = ("survey_id", "contact_id", "to_number", "from_number", "group_id")
    group = _campaign(state, form, fields, "survey_id")
    if isinstance(group, Answer):
        return group
    if form["survey_id"] not in state.surveys:
        return refused("Survey not found.")
    number = state.recipient(form)
    if isinstance(number, Answer):
        return number
    effect("survey", f"{form['survey_id']}|{number}", to_number=number, group_id=group.group_id)
    return ok(message="Survey initiated.")


def series_list(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    return ok(series=list(state.series.values()))


def surveys_list(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    return ok(surveys=list(state.surveys.values()))


def authorization_check(state: PidjState, form: Form, params: Params, effect: Effect) -> Answer:
    return ok(message="Authorization successful.")
