"""The Pidj simulator's records: users, contacts, groups, series, surveys, consent.

Plain data and the document's rules, no HTTP: ``sandbox.py`` parses requests
and calls these. Every operation returns an :class:`Answer` (HTTP status and
the JSON body Pidj would send, with ``code`` and ``status``).
"""

from __future__ import annotations

import re
import uuid
import zoneinfo
from dataclasses import dataclass, field
from functools import cache
from typing import Any

E164 = re.compile(r"\+[1-9]\d{6,14}")
ROLES = frozenset({"admin", "manager", "agent"})
USER_FIELDS = (
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
_ADDRESS = tuple(
    f"{kind}_{part}"
    for kind in ("home", "business")
    for part in ("street_1", "street_2", "city", "state", "postal", "country")
)
CONTACT_FIELDS = (
    "phone_number",
    "email_address",
    "first_name",
    "last_name",
    "business_name",
    "display_name",
    "group",
    "timezone",
    "external_id",
    *_ADDRESS,
)
PRIMARY_GROUP = "gr:04207209-7f61-5801-a3bd-958ecff19f77"
PRIMARY_NUMBER = "+18885552222"
SUPPORT_GROUP = "gr:7d3c1f0e-2a4b-4c5d-9e8f-0a1b2c3d4e5f"
SUPPORT_NUMBER = "+18885554444"
NO_NUMBER_GROUP = "gr:5b6a7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"
SERIES_ID = "ts:z81de899-207k-8ej4-ba5q-046zb73gte74"
SURVEY_ID = "sv:z81de899-207k-8ej4-ba5q-046zb73gte74"


@dataclass(frozen=True)
class Answer:
    http: int
    body: dict[str, Any]


def ok(**fields: Any) -> Answer:
    return Answer(200, {"code": 200, "status": "success", **fields})


def refused(message: str, status: str = "failure") -> Answer:
    """Pidj's way of refusing: HTTP 200 and ``status: failure``."""
    return Answer(200, {"code": 200, "status": status, "message": message})


def bad_request(message: str, http: int = 400) -> Answer:
    return Answer(http, {"code": http, "status": "error", "message": message})


def new_id(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4()}"


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def is_zone(value: str) -> bool:
    return value in _zones()


@dataclass
class Group:
    group_id: str
    name: str
    phone_number: str
    color: str = ""
    consent_required: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group_id": self.group_id,
            "phone_number": self.phone_number,
            "color": self.color,
        }


@dataclass
class PidjState:
    """Everything the simulated account holds."""

    groups: dict[str, Group] = field(default_factory=dict)
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    surveys: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    consent_requested: set[tuple[str, str]] = field(default_factory=set)
    consent_given: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def seeded(cls) -> PidjState:
        """Groups with and without a number, one series, one survey."""
        state = cls()
        for group in (
            Group(PRIMARY_GROUP, "Primary", PRIMARY_NUMBER, "#1f77b4", consent_required=True),
            Group(SUPPORT_GROUP, "Support", SUPPORT_NUMBER, "green"),
            Group(NO_NUMBER_GROUP, "No Number", ""),
        ):
            state.groups[group.group_id] = group
        state.series[SERIES_ID] = {"name": "Welcome", "series_id": SERIES_ID, "groups": [PRIMARY_GROUP]}
        state.surveys[SURVEY_ID] = {"name": "Satisfaction", "survey_id": SURVEY_ID}
        return state

    # -- lookups ------------------------------------------------------------
    def group_by_number(self, number: str) -> Group | None:
        return next((g for g in self.groups.values() if g.phone_number and g.phone_number == number), None)

    def group_by_ref(self, ref: str) -> Group | None:
        """A group by id (case-sensitive) or by name (not case-sensitive)."""
        if ref.startswith("gr:"):
            return self.groups.get(ref)
        return next((g for g in self.groups.values() if g.name.lower() == ref.lower()), None)

    def contact_by_phone(self, number: str) -> dict[str, Any] | None:
        return next((c for c in self.contacts.values() if c.get("phone_number") == number), None)

    def live_user(self, user_id: str) -> dict[str, Any] | None:
        user = self.users.get(user_id)
        return None if user is None or user["deleted"] else user

    def sender(self, form: dict[str, str]) -> Group | Answer:
        """The sending group from ``from_number`` or ``group_id`` (exactly one)."""
        number, group_id = form.get("from_number", ""), form.get("group_id", "")
        if bool(number) == bool(group_id):
            return bad_request("Give either from_number or group_id.")
        if number:
            if not E164.fullmatch(number):
                return bad_request("from_number must be in E.164 format.")
            group = self.group_by_number(number)
            if group is None:
                return refused("from_number is not an active number of your groups.")
            return group
        if not group_id.startswith("gr:"):
            return bad_request("group_id must be a group id (gr:...).")
        found = self.groups.get(group_id)
        if found is None:
            return refused("Group not found.")
        if not found.phone_number:
            return refused("The group has no phone number; the message was not sent.")
        return found

    def recipient(self, form: dict[str, str]) -> str | Answer:
        """The number addressed by ``contact_id`` or ``to_number`` (one); a new number is a new contact."""
        contact_id, number = form.get("contact_id", ""), form.get("to_number", "")
        if bool(contact_id) == bool(number):
            return bad_request("A contact_id or to_number must be specified (only one).")
        if contact_id:
            contact = self.contacts.get(contact_id) if contact_id.startswith("co:") else None
            if contact is None or not contact.get("phone_number"):
                return refused("Contact not found or has no phone number.")
            phone: str = contact["phone_number"]
            return phone
        if not E164.fullmatch(number):
            return bad_request("to_number must be in E.164 format.")
        if self.contact_by_phone(number) is None:
            contact_id = new_id("co")
            self.contacts[contact_id] = blank_contact(contact_id, number)
        return number


def blank_contact(contact_id: str, phone: str) -> dict[str, Any]:
    return {
        "id": contact_id,
        "first_name": "",
        "last_name": "",
        "business_name": "",
        "display_name": "",
        "email_address": "",
        "phone_number": phone,
        "phone_office": None,
        "phone_fax": None,
        "timezone": "America/Denver",
        "tags": [],
        "external_id": None,
    }


USER_SHOWN = (
    "first_name",
    "last_name",
    "business_name",
    "display_name",
    "email_address",
    "phone_number",
    "tags",
    "username",
    "roles",
    "external_id",
)
"""The fields of GET /user/{id} as the document shows them (no id, groups or timezone)."""


def public_user(user: dict[str, Any]) -> dict[str, Any]:
    """GET /user/{id}: only the fields the document's sample answer shows."""
    shown = {key: user.get(key, "") for key in USER_SHOWN}
    shown["tags"] = user.get("tags") or []
    return shown
