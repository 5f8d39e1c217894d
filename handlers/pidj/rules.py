"""The document's field rules, checked before anything is sent.

Used by the ``check=`` hooks (after the JSON Schema, for what a schema cannot
say well) and raise ``InvalidPayload`` with the field's JSON path. Each rule
says where in the Pidj document it comes from.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import zoneinfo
from collections.abc import Iterable
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from handlers.pidj import iso3166
from worker.errors import InvalidPayload
from worker.phone_numbers import is_valid, parse_international

MAX_TEXT_BODY = 1600
"""'Message lengths greater than 1,600 characters will be truncated' (POST /send)."""
MAX_TOPIC = 3200
"""Task ``topic``: '3,200 characters max.'"""
MAX_ADDRESS_LINE = 200
"""``*_street_1``, ``*_street_2``, ``*_city``: 'Maximum length: 200 characters.'"""
ROLES = ("admin", "manager", "agent")
"""POST /user ``roles``: 'Valid options: admin, manager, and agent.'"""
ADDRESS_KINDS = ("home", "business")
ADDRESS_PARTS = ("street_1", "street_2", "city", "state", "postal", "country")

PREFIXES = {"group": "gr:", "contact": "co:", "user": "us:", "series": "ts:", "survey": "sv:", "task": "ci:"}
_ID_BODY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(\s[^<>]*)?/?>|<!--")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# ANSI / USPS two-letter codes: states, DC, territories and military "states".
US_STATES = frozenset(
    [
        "AL",
        "AK",
        "AZ",
        "AR",
        "CA",
        "CO",
        "CT",
        "DE",
        "FL",
        "GA",
        "HI",
        "ID",
        "IL",
        "IN",
        "IA",
        "KS",
        "KY",
        "LA",
        "ME",
        "MD",
        "MA",
        "MI",
        "MN",
        "MS",
        "MO",
        "MT",
        "NE",
        "NV",
        "NH",
        "NJ",
        "NM",
        "NY",
        "NC",
        "ND",
        "OH",
        "OK",
        "OR",
        "PA",
        "RI",
        "SC",
        "SD",
        "TN",
        "TX",
        "UT",
        "VT",
        "VA",
        "WA",
        "WV",
        "WI",
        "WY",
        "DC",
        "AS",
        "GU",
        "MP",
        "PR",
        "VI",
        "UM",
        "FM",
        "MH",
        "PW",
        "AA",
        "AE",
        "AP",
    ]
)
# 'Valid 5 or 10 digit zipcode (US addresses). British, Canadian, and Australian postal codes also supported.'
_POSTAL = (
    re.compile(r"\d{5}(-\d{4})?"),  # US ZIP / ZIP+4
    re.compile(r"[A-Za-z]\d[A-Za-z] ?\d[A-Za-z]\d"),  # Canada
    re.compile(r"([A-Za-z]{1,2}\d[A-Za-z\d]? ?\d[A-Za-z]{2}|GIR ?0AA)", re.IGNORECASE),  # UK
    re.compile(r"\d{4}"),  # Australia
)


def at(field: str) -> str:
    """JSON pointer of a payload field."""
    return f"/payload/{field}"


def e164(value: Any, field: str) -> str:
    """A valid phone number, returned in E.164 ('This must be in E.164 format').

    Accepts what ``phonenumbers`` parses in international form ("+1 888-555-3333").
    A national number ("(888) 555-3333") is refused: the check runs before the
    account is known, so there is no region to read it in.
    """
    if not isinstance(value, str) or not value.strip().startswith("+"):
        raise InvalidPayload(f"{field} must be an international phone number starting with +", path=at(field))
    formatted, problem = _parse_e164(value)
    if problem is not None:
        raise InvalidPayload(f"{field} {problem}", path=at(field))
    return formatted


@functools.lru_cache(maxsize=65536)
def _parse_e164(value: str) -> tuple[str, str | None]:
    """(E.164, None) or ("", why not). Cached: checking costs ~10 us (~25 us for text not
    in E.164 form) and the same numbers (a campaign's sender above all) come back again
    and again; a campaign's recipients do not, hence the shortcut of ``parse_international``."""
    try:
        number = parse_international(value)
    except phonenumbers.NumberParseException:
        return "", "is not a phone number"
    if not is_valid(number):
        return "", "is not a valid phone number"
    formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted, None


def prefixed_id(value: Any, kind: str, field: str) -> str:
    """An id of the given kind: ``gr:``, ``co:``, ``us:``, ``ts:``, ``sv:`` + its body."""
    prefix = PREFIXES[kind]
    if not isinstance(value, str) or not value.startswith(prefix) or not _ID_BODY.fullmatch(value[3:]):
        raise InvalidPayload(f"{field} must be a {kind} id ({prefix}...)", path=at(field))
    return value


def exactly_one(payload: dict[str, Any], first: str, second: str) -> str:
    """Name of the one field of an either/or pair that is present.

    The document marks both as CONTINGENT ('... or ...'); sending both would
    leave it to Pidj which one wins, so exactly one is required.
    """
    given = [name for name in (first, second) if payload.get(name) not in (None, "")]
    if len(given) != 1:
        where = at(second) if len(given) == 2 else "/payload"
        raise InvalidPayload(f"exactly one of {first} and {second} is required", path=where)
    return given[0]


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone(value: Any, field: str) -> str:
    """An IANA time zone name, case-sensitive ('This value is case sensitive')."""
    if not isinstance(value, str) or value not in _zones():
        raise InvalidPayload(f"{field} must be an IANA time zone such as America/Denver", path=at(field))
    return value


def roles(value: Any, field: str = "roles") -> list[str]:
    """Roles from admin/manager/agent, each at most once (sent pipe-joined)."""
    if not isinstance(value, list) or any(role not in ROLES for role in value):
        raise InvalidPayload(f"{field} must be a list of {', '.join(ROLES)}", path=at(field))
    if len(set(value)) != len(value):
        raise InvalidPayload(f"{field} lists a role twice", path=at(field))
    return list(value)


def group_ref(value: Any, field: str) -> str:
    """A group named by its id (``gr:...``) or its full name; a name may not contain ``|``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidPayload(f"{field} must be a group id or name", path=at(field))
    if value.startswith("gr:"):
        return prefixed_id(value, "group", field)
    if "|" in value:
        raise InvalidPayload(
            f"{field}: a group name cannot contain '|' (Pidj's list separator)", path=at(field)
        )
    return value


def group_refs(value: Any, field: str = "groups") -> list[str]:
    """Groups (ids or names) for a pipe-joined list."""
    if not isinstance(value, list):
        raise InvalidPayload(f"{field} must be a list of group ids or names", path=at(field))
    return [group_ref(item, f"{field}/{index}") for index, item in enumerate(value)]


def email(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _EMAIL.fullmatch(value):
        raise InvalidPayload(f"{field} is not an e-mail address", path=at(field))
    return value


def text_body(value: str, allow_truncation: bool) -> str:
    """At most 1,600 characters unless the publisher accepts Pidj's truncation."""
    if len(value) > MAX_TEXT_BODY and not allow_truncation:
        raise InvalidPayload(
            f"text_body has {len(value)} characters; Pidj truncates beyond {MAX_TEXT_BODY} "
            "(set allow_truncation to accept that)",
            path=at("text_body"),
        )
    return value


def no_html(value: str, field: str, limit: int) -> str:
    """Plain text within ``limit`` characters ('HTML is not allowed & will not be displayed')."""
    if len(value) > limit:
        raise InvalidPayload(f"{field} is longer than {limit} characters", path=at(field))
    if _HTML_TAG.search(value):
        raise InvalidPayload(f"{field} must not contain HTML (Pidj does not display it)", path=at(field))
    return value


def next_url(payload: dict[str, Any]) -> str | None:
    """The SSO ``next`` value, Base64 as Pidj wants it.

    ``next_url`` is a plain URL that we encode; ``next`` is already Base64 and must
    decode to a full http(s) URL ('The full URL (http/https included) ... Must be Base64 encoded').
    """
    if payload.get("next_url") is not None and payload.get("next") is not None:
        raise InvalidPayload("give next_url or next, not both", path=at("next"))
    if payload.get("next_url") is not None:
        _full_url(payload["next_url"], "next_url")
        return base64.b64encode(payload["next_url"].encode("utf-8")).decode("ascii")
    encoded = payload.get("next")
    if encoded is None:
        return None
    try:
        decoded = base64.b64decode(str(encoded), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidPayload("next must be Base64 (use next_url for a plain URL)", path=at("next")) from None
    _full_url(decoded, "next")
    return str(encoded)


def _full_url(value: Any, field: str) -> None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidPayload(f"{field} must be a full http(s) URL", path=at(field))


def address_fields(payload: dict[str, Any]) -> None:
    """``home_*`` / ``business_*`` address fields: lengths, state, postal code, country.

    Pidj silently discards a state or country it does not know; we refuse it instead.
    A blank value (clear the field on update) is always allowed.
    """
    for kind in ADDRESS_KINDS:
        for part in ADDRESS_PARTS:
            field = f"{kind}_{part}"
            value = payload.get(field)
            if value is None or value == "":
                continue
            _address_part(part, value, field)


def _address_part(part: str, value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidPayload(f"{field} must be a string", path=at(field))
    if part in ("street_1", "street_2", "city") and len(value) > MAX_ADDRESS_LINE:
        raise InvalidPayload(f"{field} is longer than {MAX_ADDRESS_LINE} characters", path=at(field))
    if part == "state" and value.upper() not in US_STATES:
        raise InvalidPayload(f"{field} must be a 2-letter ANSI/USPS state code", path=at(field))
    if part == "postal" and not any(pattern.fullmatch(value) for pattern in _POSTAL):
        raise InvalidPayload(
            f"{field} must be a US, Canadian, British or Australian postal code", path=at(field)
        )
    if part == "country" and value.upper() not in iso3166.ALPHA_2 | iso3166.ALPHA_3:
        raise InvalidPayload(f"{field} must be an ISO 3166-1 alpha-2 or alpha-3 code", path=at(field))


def optional(payload: dict[str, Any], fields: Iterable[str], rule: Any) -> None:
    """Apply ``rule(value, field)`` to each present, non-blank field, storing what it returns."""
    for field in fields:
        value = payload.get(field)
        if value is not None and value != "":
            payload[field] = rule(value, field)
