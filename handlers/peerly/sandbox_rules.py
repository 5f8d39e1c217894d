"""What the Peerly simulator refuses, written from the document alone.

Kept apart from the handlers' validation on purpose: the worker must be
right by the document, and a rule shared by both sides would hide a mistake
on either. Each function returns the text of a 400, or None.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from typing import Any

import orjson

MAPPABLE_COLUMNS = frozenset(
    {
        "lead_phone",
        "extern_id",
        "xtitle",
        "first_name",
        "mid_name",
        "last_name",
        "suffix",
        "address1",
        "address2",
        "city",
        "state",
        "zip",
        "email",
        "gate_keeper",
        "aux_data1",
        "aux_data2",
        "aux_data3",
        "aux_data4",
        "aux_data5",
    }
)
LAST_CONTACT = frozenset(
    {
        "WITHIN_LAST_WEEK",
        "WITHIN_LAST_MONTH",
        "WITHIN_TWO_MONTHS",
        "WITHIN_THREE_MONTHS",
        "WITHIN_SIX_MONTHS",
        "OVER_SIX_MONTHS",
        "NEVER",
    }
)
US_STATES = frozenset(
    {
        "AL",
        "AK",
        "AZ",
        "AR",
        "CA",
        "CO",
        "CT",
        "DE",
        "DC",
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
    }
)
AI_THRESHOLDS = frozenset({"DISABLED", "LIKELY", "VERY_LIKELY", "EXTREMELY_LIKELY"})
MEDIA_TYPES = frozenset({"IMAGE", "VIDEO"})
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# (field, allowed values, default) of the upload's integer flags.
_FLAGS = (
    ("split_states", {"0", "1"}, "0"),
    ("split_timezones", {"0", "1"}, "1"),
    ("suppress_cell_phones", {"0", "1", "4"}, "0"),
    ("use_nat_dnc", {"0", "1"}, "0"),
    ("use_state_dnc", {"0", "1"}, "0"),
    ("opt_in", {"0", "1"}, None),
)


def upload_form_error(form: dict[str, str]) -> str | None:
    """The 400 of ``POST /phonelists`` for these text fields, or None."""
    for name in ("account", "list_name"):
        if not form.get(name, "").strip():
            return f"{name} is a required parameter"
    if not form["account"].isdigit():
        return "account must be an account ID number"
    for name, allowed, _ in _FLAGS:
        if name in form and form[name] not in allowed:
            return f"{name} must be one of {', '.join(sorted(allowed))}"
    flags = {name: form.get(name, default) for name, _, default in _FLAGS}
    for name in _conditional_fields(flags):
        if not form.get(name, "").strip():
            return f"{name} is required for this list"
    if "last_contact" in form and form["last_contact"] not in LAST_CONTACT:
        return "last_contact is not a valid choice"
    return _list_map_error(form.get("list_map"))


def _conditional_fields(flags: dict[str, str | None]) -> list[str]:
    """The fields the upload table requires for these flag values."""
    required = []
    if flags["suppress_cell_phones"] == "0":
        required.append("wireless_suppress_initials")
    if flags["use_nat_dnc"] == "0":
        required.append("dnc_suppress_initials")
    if flags["use_state_dnc"] == "0":
        required.append("state_dnc_suppress_initials")
    if flags["opt_in"] is None and flags["suppress_cell_phones"] != "4":
        required.append("opt_in")
    if flags["opt_in"] == "1":
        required += ["opt_in_source_url", "last_contact", "list_description"]
    if flags["opt_in"] == "0":
        required += ["opt_exempt_initials", "last_contact", "list_description"]
    return required


def _list_map_error(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        mapping = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "list_map must be a JSON object"
    if not isinstance(mapping, dict) or not mapping:
        return "list_map must be a JSON object"
    for column, index in mapping.items():
        if column not in MAPPABLE_COLUMNS:
            return f"list_map: {column} is not a mappable column"
        if isinstance(index, bool) or not isinstance(index, int) or index < 1:
            return f"list_map: {column} must map to a column number"
    if "lead_phone" not in mapping:
        return "list_map must map lead_phone"
    return None


def phone_list_rows(filename: str, content: bytes, list_map: str | None) -> tuple[int, str | None]:
    """(data rows, error) of an uploaded ``.csv`` or ``.zip`` of ``.csv`` files."""
    name = filename.lower()
    if name.endswith(".csv"):
        texts = [content]
    elif name.endswith(".zip"):
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                texts = [archive.read(n) for n in archive.namelist() if n.lower().endswith(".csv")]
        except zipfile.BadZipFile:
            return 0, "file is not a valid zip"
        if not texts:
            return 0, "the zip holds no .csv file"
    else:
        return 0, "file must be a .csv or a .zip of .csv files"
    rows = 0
    for text in texts:
        try:
            table = list(csv.reader(io.StringIO(text.decode("utf-8-sig"))))
        except (UnicodeDecodeError, csv.Error):
            return 0, "file is not a readable CSV"
        if not table:
            return 0, "file is empty"
        if list_map is None and "lead_phone" not in table[0]:
            return 0, "no lead_phone column (and no list_map)"
        if list_map is not None and orjson.loads(list_map)["lead_phone"] > len(table[0]):
            return 0, "list_map points past the last column"
        rows += len(table) - 1
    return rows, None


def job_error(body: Any, accounts: frozenset[str] | None) -> str | None:
    """The 400 of ``POST /1to1/jobs`` for this JSON body, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    for name in ("account_id", "name", "did_state"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            return f"{name} is required"
    if accounts is not None and body["account_id"] not in accounts:
        return "You do not have access to this account"
    if body["did_state"] not in US_STATES | {"USA", "CAN"}:
        return "did_state must be a state abbreviation, USA or CAN"
    if body.get("status", "active") not in ("active", "paused"):
        return "status must be active or paused"
    if body.get("ai_auto_opt_out_threshold", "DISABLED") not in AI_THRESHOLDS:
        return "ai_auto_opt_out_threshold is not a valid choice"
    return _templates_error(body.get("templates")) or _job_extras_error(body)


def _templates_error(templates: Any) -> str | None:
    if not isinstance(templates, list) or not templates:
        return "templates is required"
    defaults = 0
    for template in templates:
        if not isinstance(template, dict):
            return "templates must be objects"
        for name in ("text", "title"):
            if not isinstance(template.get(name), str) or not template[name]:
                return f"templates[].{name} is required"
        if template.get("is_default", False) is True:
            defaults += 1
        advanced = template.get("advanced")
        for media in (template.get("media"), advanced.get("media") if isinstance(advanced, dict) else None):
            if media is None:
                continue
            if not isinstance(media, dict) or not isinstance(media.get("media_id"), str):
                return "media.media_id is required"
            if media.get("media_type") not in MEDIA_TYPES:
                return "media.media_type must be IMAGE or VIDEO"
    # "only one template is allowed and will be used as the default": a lone
    # template is the default whatever it says; several need exactly one.
    if len(templates) > 1 and defaults != 1:
        return "exactly one template must be the default"
    return None


def _job_extras_error(body: dict[str, Any]) -> str | None:
    npas = body.get("did_npa_subset", [])
    if not isinstance(npas, list) or not all(isinstance(n, str) and re.fullmatch(r"\d{3}", n) for n in npas):
        return "did_npa_subset must be a list of area codes"
    agents = body.get("agent_ids", [])
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        return "agent_ids must be a list of strings"
    for name in ("can_use_mms", "ai_enabled"):
        if name in body and not isinstance(body[name], bool):
            return f"{name} must be a boolean"
    schedule = body.get("schedule_id")
    if schedule is not None and (isinstance(schedule, bool) or not isinstance(schedule, int)):
        return "schedule_id must be an integer"
    for name in ("start_date", "end_date"):
        if name in body and not (isinstance(body[name], str) and _DATE.match(body[name])):
            return f"{name} must be a date (YYYY-MM-DD)"
    if not isinstance(body.get("questions", []), list):
        return "questions must be a list"
    return None


def media_form_error(form: dict[str, str], accounts: frozenset[str] | None) -> str | None:
    """The 400 of ``POST /v2/media`` for these text fields, or None."""
    for name in ("account_id", "identity_id"):
        if not form.get(name, "").strip():
            return f"{name} is a required parameter"
    if accounts is not None and form["account_id"] not in accounts:
        return "You do not have access to this account"
    return None
