"""Rules of Peerly payloads that JSON Schema cannot say well, with exact paths.

The payload schemas carry the same conditional rules (``if``/``then``) for
publishers; these ``check`` hooks repeat them so that a refusal names the one
field at fault (``/payload/dnc_suppress_initials``) instead of "a required
property is missing", and add what a schema cannot: phone numbers, unique
columns, references between templates and questions, date order.

Phone numbers (``rows[].lead_phone``) are written as the 10-digit national
number of a US or Canadian line (``2025550143``): Peerly places numbers by
area code (``split_states``/``split_timezones`` split "by the lead phone's
state"/"timezone", ``did_state`` is a state, USA or CAN), so only NANP
numbers of those two countries can be texted, and a phone column of plain
digits is what list-upload CSVs carry. Numbers elsewhere in the NANP (the
Caribbean) and any other country are invalid rows.
"""

from __future__ import annotations

import datetime
from typing import Any

import phonenumbers

from worker.errors import InvalidPayload
from worker.phone_numbers import is_valid

MAPPABLE_COLUMNS = (
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
)
"""The columns a list may map, in the document's order (also the CSV's order)."""

LAST_CONTACT = (
    "WITHIN_LAST_WEEK",
    "WITHIN_LAST_MONTH",
    "WITHIN_TWO_MONTHS",
    "WITHIN_THREE_MONTHS",
    "WITHIN_SIX_MONTHS",
    "OVER_SIX_MONTHS",
    "NEVER",
)
P2P = 4
"""``suppress_cell_phones=4``: P2P (landlines removed), where ``opt_in`` is optional."""

_PHONE_REGIONS = frozenset({"US", "CA"})
MAX_REPORTED_ROWS = 1000
"""Invalid row indexes listed in a result; the count is always complete."""


def _missing(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name)
    return value is None or (isinstance(value, str) and not value.strip())


def upload_requirements(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, why) of each conditional field the upload table requires here.

    Absent flags take the document's defaults: ``suppress_cell_phones`` 0,
    ``use_nat_dnc`` 0, ``use_state_dnc`` 0.
    """
    suppress = payload.get("suppress_cell_phones", 0)
    required = []
    if suppress == 0:
        required.append(("wireless_suppress_initials", "suppress_cell_phones is 0"))
    if payload.get("use_nat_dnc", 0) == 0:
        required.append(("dnc_suppress_initials", "use_nat_dnc is 0"))
    if payload.get("use_state_dnc", 0) == 0:
        required.append(("state_dnc_suppress_initials", "use_state_dnc is 0"))
    opt_in = payload.get("opt_in")
    if opt_in is None and suppress != P2P:
        required.append(("opt_in", "the list is not P2P (suppress_cell_phones is not 4)"))
    if opt_in == 1:
        required += [
            (name, "opt_in is 1") for name in ("opt_in_source_url", "last_contact", "list_description")
        ]
    if opt_in == 0:
        required += [
            (name, "opt_in is 0") for name in ("opt_exempt_initials", "last_contact", "list_description")
        ]
    return required


def check_upload_list(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``check`` of ``upload_list``: every rule of the upload table, then the rows."""
    for name, why in upload_requirements(payload):
        if _missing(payload, name):
            raise InvalidPayload(f"{name} is required when {why}", path=f"/payload/{name}")
    if ("rows" in payload) == ("file" in payload):
        raise InvalidPayload("give the list either as rows or as a file, not both", path="/payload")
    _check_list_map(payload)
    if "rows" in payload:
        _, invalid = normalise_rows(payload["rows"])
        if len(invalid) == len(payload["rows"]):
            raise InvalidPayload("no row has a valid US or Canadian lead_phone", path="/payload/rows")
    return payload


def _check_list_map(payload: dict[str, Any]) -> None:
    mapping = payload.get("list_map")
    if mapping is None:
        return
    if "rows" in payload:
        raise InvalidPayload(
            "list_map goes with a file; for rows the worker writes the columns and their map",
            path="/payload/list_map",
        )
    unknown = sorted(set(mapping) - set(MAPPABLE_COLUMNS))
    if unknown:
        raise InvalidPayload(f"{unknown[0]} is not a mappable column", path=f"/payload/list_map/{unknown[0]}")
    if "lead_phone" not in mapping:
        raise InvalidPayload("list_map must map lead_phone", path="/payload/list_map")
    if len(set(mapping.values())) != len(mapping):
        raise InvalidPayload("two columns of list_map have the same number", path="/payload/list_map")


def normalise_phone(raw: str) -> str | None:
    """The 10-digit national number of a valid US/Canadian phone, else None."""
    try:
        number = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        return None
    if not is_valid(number):
        return None
    if phonenumbers.region_code_for_number(number) not in _PHONE_REGIONS:
        return None
    return str(phonenumbers.national_significant_number(number))


def normalise_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """(valid rows with ``lead_phone`` normalised, indexes of the invalid rows)."""
    valid: list[dict[str, Any]] = []
    invalid: list[int] = []
    for index, row in enumerate(rows):
        phone = normalise_phone(str(row.get("lead_phone", "")))
        if phone is None:
            invalid.append(index)
        else:
            valid.append({**row, "lead_phone": phone})
    return valid, invalid


def invalid_rows_report(invalid: list[int]) -> dict[str, Any]:
    """What a result says of the rows that were not sent."""
    return {
        "count": len(invalid),
        "indexes": invalid[:MAX_REPORTED_ROWS],
        "indexes_truncated": len(invalid) > MAX_REPORTED_ROWS,
    }


def check_create_job(payload: dict[str, Any]) -> dict[str, Any]:
    """The ``check`` of ``create_job``: one default template, references, dates."""
    templates = payload["templates"]
    _check_default_template(templates)
    ids = [t["id"] for t in templates if "id" in t]
    if len(set(ids)) != len(ids):
        raise InvalidPayload("two templates have the same id", path="/payload/templates")
    _check_question_templates(payload.get("questions", []), set(ids))
    _check_dates(payload)
    return payload


def _check_default_template(templates: list[dict[str, Any]]) -> None:
    # "Only one template is allowed and will be used as the default": a lone
    # template is the default whatever it says (is_default "defaults to
    # false", so an explicit false is the same as leaving it out). With
    # several (as the document's own example sends), exactly one must say
    # is_default true.
    if len(templates) == 1:
        return
    defaults = [i for i, t in enumerate(templates) if t.get("is_default") is True]
    if len(defaults) != 1:
        raise InvalidPayload(
            f"with several templates exactly one must have is_default true (found {len(defaults)})",
            path="/payload/templates",
        )


def _check_question_templates(questions: list[dict[str, Any]], template_ids: set[str]) -> None:
    # A question (or one of its responses) that points at a template the job
    # does not have would leave agents without the reply it promises.
    for q, question in enumerate(questions):
        refs = [(f"/payload/questions/{q}/template", question.get("template", ""))]
        refs += [
            (f"/payload/questions/{q}/responses/{r}/template", response.get("template", ""))
            for r, response in enumerate(question.get("responses", []))
        ]
        for path, ref in refs:
            if ref and ref not in template_ids:
                raise InvalidPayload(f"no template has the id {ref!r}", path=path)


def _check_dates(payload: dict[str, Any]) -> None:
    dates = {}
    for name in ("start_date", "end_date"):
        if name in payload:
            try:
                dates[name] = datetime.date.fromisoformat(payload[name])
            except ValueError:
                raise InvalidPayload(f"{name} is not a date (YYYY-MM-DD)", path=f"/payload/{name}") from None
    if len(dates) == 2 and dates["end_date"] < dates["start_date"]:
        raise InvalidPayload("end_date is before start_date", path="/payload/end_date")
