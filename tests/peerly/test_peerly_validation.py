"""Payload rules of the Peerly commands: schema and ``check`` hooks agree, both sides of each rule."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

import schemas
from handlers.peerly.files import csv_from_rows, local_path, url_allowed
from handlers.peerly.jobs import JOB_EXAMPLE
from handlers.peerly.lists import UPLOAD_EXAMPLE
from handlers.peerly.settings import PeerlyAccount
from handlers.peerly.validation import (
    check_create_job,
    check_upload_list,
    normalise_phone,
    normalise_rows,
    upload_requirements,
)
from tests.peerly.conftest import P2P_UPLOAD
from worker.errors import InvalidPayload

UPLOAD = jsonschema_rs.validator_for(schemas.load("upload_list"))
JOB = jsonschema_rs.validator_for(schemas.load("create_job"))

ROWS = [{"lead_phone": "2025550143"}]
IVR_OPT_IN = {
    "list_name": "IVR",
    "suppress_cell_phones": 1,
    "use_nat_dnc": 1,
    "use_state_dnc": 1,
    "opt_in": 1,
    "opt_in_source_url": "https://example.org/signup",
    "last_contact": "WITHIN_LAST_MONTH",
    "list_description": "Signed up on our site",
    "rows": ROWS,
}
IVR_EXEMPT = {
    **{k: v for k, v in IVR_OPT_IN.items() if k != "opt_in_source_url"},
    "opt_in": 0,
    "opt_exempt_initials": "JD",
}
NO_SUPPRESSION = {
    **P2P_UPLOAD,
    "suppress_cell_phones": 0,
    "wireless_suppress_initials": "JD",
    "opt_in": 0,
    "opt_exempt_initials": "JD",
    "last_contact": "NEVER",
    "list_description": "Members list",
}
NO_DNC = {**P2P_UPLOAD, "use_nat_dnc": 0, "use_state_dnc": 0}


def without(payload: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in names}


# (case, payload, the field whose absence the rule is about or None when the payload passes)
UPLOAD_TABLE: list[tuple[str, dict[str, Any], str | None]] = [
    ("p2p without opt_in passes", P2P_UPLOAD, None),
    ("suppress 0 with wireless initials passes", NO_SUPPRESSION, None),
    (
        "suppress 0 needs wireless_suppress_initials",
        without(NO_SUPPRESSION, "wireless_suppress_initials"),
        "wireless_suppress_initials",
    ),
    (
        "suppress absent (default 0) needs wireless_suppress_initials",
        without(NO_SUPPRESSION, "wireless_suppress_initials", "suppress_cell_phones"),
        "wireless_suppress_initials",
    ),
    ("suppress 1 needs no wireless initials", IVR_OPT_IN, None),
    (
        "use_nat_dnc 0 with initials passes",
        {**NO_DNC, "dnc_suppress_initials": "JD", "state_dnc_suppress_initials": "JD"},
        None,
    ),
    (
        "use_nat_dnc 0 needs dnc_suppress_initials",
        {**NO_DNC, "state_dnc_suppress_initials": "JD"},
        "dnc_suppress_initials",
    ),
    (
        "use_nat_dnc absent (default 0) needs dnc_suppress_initials",
        without({**NO_DNC, "state_dnc_suppress_initials": "JD"}, "use_nat_dnc"),
        "dnc_suppress_initials",
    ),
    (
        "use_state_dnc 0 needs state_dnc_suppress_initials",
        {**NO_DNC, "dnc_suppress_initials": "JD"},
        "state_dnc_suppress_initials",
    ),
    (
        "use_state_dnc absent (default 0) needs state_dnc_suppress_initials",
        without({**NO_DNC, "dnc_suppress_initials": "JD"}, "use_state_dnc"),
        "state_dnc_suppress_initials",
    ),
    ("IVR (suppress 1) needs opt_in", without(IVR_OPT_IN, "opt_in"), "opt_in"),
    ("suppress 0 needs opt_in", without(NO_SUPPRESSION, "opt_in"), "opt_in"),
    ("opt_in 1 with its fields passes", IVR_OPT_IN, None),
    ("opt_in 1 needs opt_in_source_url", without(IVR_OPT_IN, "opt_in_source_url"), "opt_in_source_url"),
    ("opt_in 1 needs last_contact", without(IVR_OPT_IN, "last_contact"), "last_contact"),
    ("opt_in 1 needs list_description", without(IVR_OPT_IN, "list_description"), "list_description"),
    ("opt_in 0 with its fields passes", IVR_EXEMPT, None),
    ("opt_in 0 needs opt_exempt_initials", without(IVR_EXEMPT, "opt_exempt_initials"), "opt_exempt_initials"),
    ("opt_in 0 needs last_contact", without(IVR_EXEMPT, "last_contact"), "last_contact"),
    ("opt_in 0 needs list_description", without(IVR_EXEMPT, "list_description"), "list_description"),
    ("opt_in 0 does not need opt_in_source_url", IVR_EXEMPT, None),
    ("p2p with opt_in 1 still needs its fields", {**P2P_UPLOAD, "opt_in": 1}, "opt_in_source_url"),
]


@pytest.mark.parametrize(("case", "payload", "missing"), UPLOAD_TABLE, ids=[c[0] for c in UPLOAD_TABLE])
def test_upload_table_rule_in_check(case: str, payload: dict[str, Any], missing: str | None) -> None:
    """The check hook refuses exactly the payloads the upload table refuses, naming the missing field."""
    if missing is None:
        assert check_upload_list(copy.deepcopy(payload)) == payload
        return
    with pytest.raises(InvalidPayload) as caught:
        check_upload_list(copy.deepcopy(payload))
    assert caught.value.path == f"/payload/{missing}"


@pytest.mark.parametrize(("case", "payload", "missing"), UPLOAD_TABLE, ids=[c[0] for c in UPLOAD_TABLE])
def test_upload_table_rule_in_schema(case: str, payload: dict[str, Any], missing: str | None) -> None:
    """The published schema says the same as the check hook for every rule of the upload table."""
    errors = [e.message for e in UPLOAD.iter_errors(payload)]
    if missing is None:
        assert errors == []
    else:
        assert any(missing in message for message in errors), errors


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("split_states", 2),
        ("split_timezones", -1),
        ("suppress_cell_phones", 2),
        ("suppress_cell_phones", 3),
        ("use_nat_dnc", 2),
        ("use_state_dnc", True),
        ("opt_in", 2),
        ("last_contact", "YESTERDAY"),
        ("wireless_suppress_initials", "J"),
        ("opt_in_source_url", "ftp://example.org"),
        ("list_description", ""),
        ("list_name", ""),
    ],
)
def test_upload_field_values_outside_the_document_are_refused(field: str, value: Any) -> None:
    """Flags, enums and formats outside what the document allows fail schema validation."""
    payload = {**IVR_OPT_IN, field: value}
    assert not UPLOAD.is_valid(payload)


@pytest.mark.parametrize(
    ("field", "values"),
    [("split_states", [0, 1]), ("split_timezones", [0, 1]), ("suppress_cell_phones", [0, 1, 4])],
)
def test_upload_flags_accept_every_documented_value(field: str, values: list[int]) -> None:
    """Every documented flag value passes the schema (with the fields it then requires)."""
    for value in values:
        payload = {**NO_SUPPRESSION, "suppress_cell_phones": 1, field: value}
        if field == "suppress_cell_phones" and value == 4:
            payload = {**P2P_UPLOAD, field: value}
        assert UPLOAD.is_valid(payload), (field, value)


def test_upload_requirements_follow_document_defaults() -> None:
    """An upload with no flags at all needs the three initials and opt_in (defaults 0, not P2P)."""
    assert [name for name, _ in upload_requirements({})] == [
        "wireless_suppress_initials",
        "dnc_suppress_initials",
        "state_dnc_suppress_initials",
        "opt_in",
    ]


def test_rows_and_file_are_exclusive() -> None:
    """A list is rows or a file: both, or neither, is refused by schema and check."""
    both = {**P2P_UPLOAD, "file": {"path": "a.csv"}}
    neither = without(P2P_UPLOAD, "rows")
    for payload in (both, neither):
        assert not UPLOAD.is_valid(payload)
        with pytest.raises(InvalidPayload):
            check_upload_list(payload)


def test_list_map_rules() -> None:
    """list_map: only with a file, known columns, lead_phone mapped, numbers unique."""
    file_upload = {**without(P2P_UPLOAD, "rows"), "file": {"path": "a.csv"}}
    good = {**file_upload, "list_map": {"first_name": 1, "lead_phone": 2}}
    assert UPLOAD.is_valid(good)
    check_upload_list(good)
    bad = {
        "/payload/list_map": {**P2P_UPLOAD, "list_map": {"lead_phone": 1}},
        "/payload/list_map/nickname": {**file_upload, "list_map": {"lead_phone": 1, "nickname": 2}},
        "/payload/list_map ": {**file_upload, "list_map": {"first_name": 1}},
        "/payload/list_map  ": {**file_upload, "list_map": {"first_name": 1, "lead_phone": 1}},
    }
    for path, payload in bad.items():
        with pytest.raises(InvalidPayload) as caught:
            check_upload_list(payload)
        assert caught.value.path == path.strip()
    assert not UPLOAD.is_valid(bad["/payload/list_map"])
    assert not UPLOAD.is_valid(bad["/payload/list_map/nickname"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(202) 555-0143", "2025550143"),
        ("+1 202 555 0143", "2025550143"),
        ("202.555.0143", "2025550143"),
        ("1-416-555-0123", "4165550123"),
        ("876 555 1234", None),
        ("+44 20 7946 0958", None),
        ("555-1234", None),
        ("not a phone", None),
        ("", None),
    ],
)
def test_phone_normalisation(raw: str, expected: str | None) -> None:
    """US/Canadian numbers become 10 digits; other countries, the Caribbean and junk are invalid."""
    assert normalise_phone(raw) == expected


def test_invalid_rows_are_reported_not_dropped_silently() -> None:
    """normalise_rows keeps valid rows (normalised) and returns the indexes of the others."""
    rows = [{"lead_phone": "x"}, {"lead_phone": "(202) 555-0143", "first_name": "A"}, {"lead_phone": "123"}]
    valid, invalid = normalise_rows(rows)
    assert valid == [{"lead_phone": "2025550143", "first_name": "A"}]
    assert invalid == [0, 2]


def test_all_rows_invalid_is_rejected() -> None:
    """An upload where no row has a valid phone is rejected at /payload/rows."""
    with pytest.raises(InvalidPayload) as caught:
        check_upload_list({**P2P_UPLOAD, "rows": [{"lead_phone": "123"}, {"lead_phone": "abc"}]})
    assert caught.value.path == "/payload/rows"


def test_csv_from_rows_writes_header_and_list_map() -> None:
    """The CSV has the columns in the document's order and a 1-based list_map that matches."""
    upload, list_map = csv_from_rows(
        [{"first_name": "Ada", "lead_phone": "2025550143"}, {"lead_phone": "3125550187", "zip": "60601"}]
    )
    assert upload.content_type == "text/csv"
    lines = upload.content.decode().splitlines()
    assert lines == ["lead_phone,first_name,zip", "2025550143,Ada,", "3125550187,,60601"]
    assert list_map == {"lead_phone": 1, "first_name": 2, "zip": 3}


def test_large_csv_is_zipped() -> None:
    """A CSV above the zip threshold is sent as a .zip."""
    rows = [{"lead_phone": "2025550143", "aux_data1": "x" * 200} for _ in range(2000)]
    upload, _ = csv_from_rows(rows)
    assert upload.filename.endswith(".zip") and upload.content_type == "application/zip"
    assert upload.content[:2] == b"PK"


def test_examples_pass_their_schemas() -> None:
    """The registered example payloads are valid (the README shows them)."""
    assert UPLOAD.is_valid(UPLOAD_EXAMPLE)
    check_upload_list(copy.deepcopy(UPLOAD_EXAMPLE))
    assert JOB.is_valid(JOB_EXAMPLE)
    check_create_job(copy.deepcopy(JOB_EXAMPLE))


def _job(**changes: Any) -> dict[str, Any]:
    job = copy.deepcopy(JOB_EXAMPLE)
    job.update(changes)
    return job


@pytest.mark.parametrize(
    ("case", "payload", "path"),
    [
        (
            "several templates, no default",
            _job(templates=[{"title": "a", "text": "b"}, {"title": "c", "text": "d"}]),
            "/payload/templates",
        ),
        (
            "two default templates",
            _job(
                templates=[
                    {"title": "a", "text": "b", "is_default": True},
                    {"title": "c", "text": "d", "is_default": True},
                ]
            ),
            "/payload/templates",
        ),
        (
            "question points at no template",
            _job(questions=[{"title": "q", "template": "nope"}]),
            "/payload/questions/0/template",
        ),
        (
            "response points at no template",
            _job(questions=[{"title": "q", "responses": [{"text": "Yes", "template": "nope"}]}]),
            "/payload/questions/0/responses/0/template",
        ),
        ("end before start", _job(start_date="2025-06-03", end_date="2025-06-02"), "/payload/end_date"),
        ("impossible date", _job(start_date="2025-02-30"), "/payload/start_date"),
    ],
)
def test_create_job_check_refuses(case: str, payload: dict[str, Any], path: str) -> None:
    """create_job's check refuses what the document (and the README's reading) rules out."""
    with pytest.raises(InvalidPayload) as caught:
        check_create_job(payload)
    assert caught.value.path == path


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("did_state", "NY", True),
        ("did_state", "USA", True),
        ("did_state", "CAN", True),
        ("did_state", "XX", False),
        ("did_state", "ny", False),
        ("did_npa_subset", ["954"], True),
        ("did_npa_subset", ["95"], False),
        ("status", "paused", True),
        ("status", "stopped", False),
        ("ai_auto_opt_out_threshold", "VERY_LIKELY", True),
        ("ai_auto_opt_out_threshold", "MAYBE", False),
        ("schedule_id", "10537189", False),
        ("start_date", "06/03/2025", False),
        ("templates", [], False),
        ("usecase", "POLITICAL", True),
    ],
)
def test_create_job_schema_fields(field: str, value: Any, valid: bool) -> None:
    """create_job's schema takes the document's values and refuses others."""
    assert JOB.is_valid(_job(**{field: value})) is valid


def test_create_job_media_needs_id_and_type() -> None:
    """Template media (either place) needs media_id and a media_type of IMAGE or VIDEO."""
    template = {"title": "t", "text": "x", "is_default": True}
    assert JOB.is_valid(_job(templates=[{**template, "media": {"media_id": "m", "media_type": "IMAGE"}}]))
    assert not JOB.is_valid(_job(templates=[{**template, "media": {"media_id": "m", "media_type": "AUDIO"}}]))
    assert not JOB.is_valid(_job(templates=[{**template, "advanced": {"media": {"media_type": "VIDEO"}}}]))


def test_account_allowlist_from_env_string() -> None:
    """upload_url_allowlist accepts the comma-separated string the environment gives."""
    account = PeerlyAccount.model_validate(
        {
            "email": "a@b.c",
            "password": "p",
            "upload_url_allowlist": "files.example.org, https://cdn.example.com/lists/",
        }
    )
    assert account.upload_url_allowlist == ["files.example.org", "https://cdn.example.com/lists/"]
    with pytest.raises(ValueError):
        PeerlyAccount.model_validate(
            {"email": "a@b.c", "password": "p", "upload_url_allowlist": "http://x.org/"}
        )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://files.example.org/a.csv", True),
        ("http://files.example.org/a.csv", False),
        ("https://files.example.org.evil.com/a.csv", False),
        ("https://user:pw@files.example.org/a.csv", False),
        ("https://cdn.example.com/lists/a.csv", True),
        ("https://cdn.example.com/listsx/a.csv", False),
        ("https://cdn.example.com/other/a.csv", False),
        ("file:///etc/passwd", False),
    ],
)
def test_url_allowlist(url: str, allowed: bool) -> None:
    """Only https URLs on a listed host or under a listed prefix may be read."""
    assert url_allowed(url, ["files.example.org", "https://cdn.example.com/lists/"]) is allowed


def test_local_path_stays_in_upload_dir(tmp_path: Path) -> None:
    """A file path must name an existing file inside upload_dir; traversal and no upload_dir are refused."""
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.csv").write_text("lead_phone\n")
    (tmp_path.parent / "secret.csv").write_text("x")
    account = PeerlyAccount.model_validate({"email": "a@b.c", "password": "p", "upload_dir": str(tmp_path)})
    assert local_path("lists/a.csv", account, "/p") == (tmp_path / "lists" / "a.csv").resolve()
    for bad in ("../secret.csv", str(tmp_path.parent / "secret.csv"), "lists/missing.csv", "lists"):
        with pytest.raises(InvalidPayload):
            local_path(bad, account, "/p")
    with pytest.raises(InvalidPayload):
        local_path("lists/a.csv", PeerlyAccount.model_validate({"email": "a@b.c", "password": "p"}), "/p")
