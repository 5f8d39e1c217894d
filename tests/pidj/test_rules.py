"""The document's field rules, checked before anything is sent (check hooks and schemas)."""

from __future__ import annotations

import base64
import re
from typing import Any

import jsonschema_rs
import phonenumbers
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import schemas
from handlers import build_registry
from handlers.pidj import rules
from worker.errors import InvalidPayload

registry = build_registry()

PIDJ = registry.types_of("pidj")
G = "gr:04207209-7f61-5801-a3bd-958ecff19f77"
C = "co:193a8313-kuq7-25aq-366z-49332azkelb2"
TEXT = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "hi"}


def check(command_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    spec = registry.commands[command_type]
    assert spec.check is not None
    return spec.check(dict(payload))


def rejected_at(command_type: str, payload: dict[str, Any]) -> str:
    with pytest.raises(InvalidPayload) as caught:
        check(command_type, payload)
    return caught.value.path


def schema_errors(command_type: str, payload: dict[str, Any]) -> list[str]:
    validator = jsonschema_rs.validator_for(schemas.load(command_type))
    return [error.message for error in validator.iter_errors(payload)]


class TestRegistry:
    def test_every_command_of_the_issue_is_registered(self) -> None:
        """All 24 commands of the issue are registered for vendor pidj."""
        assert set(PIDJ) == {
            "send_text", "initiate_task", "get_user", "create_user", "update_user", "delete_user",
            "recover_user", "pause_user", "unpause_user", "create_sso_url", "get_contact",
            "get_contact_by_phone", "create_contact", "update_contact", "delete_contact",
            "send_consent_text", "check_consent", "list_contacts", "list_groups", "subscribe_series",
            "list_series", "initiate_survey", "list_surveys", "check_authorization",
        }  # fmt: skip

    def test_unsafe_commands_are_the_ones_decided(self) -> None:
        """Exactly the commands that text, create a user or open a task are unsafe to repeat."""
        unsafe = {t for t in PIDJ if not registry.commands[t].safe_to_repeat}
        assert unsafe == {"send_text", "create_user", "initiate_task", "subscribe_series", "initiate_survey"}

    @pytest.mark.parametrize("command_type", PIDJ)
    def test_schema_is_strict_and_named(self, command_type: str) -> None:
        """Each payload schema has its $id, a title, and refuses unknown fields."""
        schema = schemas.load(command_type)
        assert schema["$id"] == f"urn:switchboard:schema:v1:payload:{command_type}"
        assert schema["title"] and schema["description"]
        assert schema["additionalProperties"] is False
        assert schema_errors(command_type, {**registry.commands[command_type].example, "surprise": 1})

    @pytest.mark.parametrize("command_type", PIDJ)
    def test_example_passes_schema_and_check(self, command_type: str) -> None:
        """The documented example of each command is valid."""
        example = registry.commands[command_type].example
        assert schema_errors(command_type, example) == []
        if registry.commands[command_type].check is not None:
            check(command_type, example)


class TestPhoneNumbers:
    def test_formatted_number_is_sent_as_e164(self) -> None:
        """ "+1 888-555-3333" becomes "+18885553333"."""
        assert check("send_text", {**TEXT, "to_number": "+1 (888) 555-3333"})["to_number"] == "+18885553333"

    @pytest.mark.parametrize("number", ["8885553333", "+1555", "+1 555 555 0100", "+999123456789", "call me"])
    def test_national_short_invalid_numbers_are_rejected(self, number: str) -> None:
        """A number without country code or not valid is rejected at its path."""
        assert rejected_at("send_text", {**TEXT, "to_number": number}) == "/payload/to_number"

    def test_from_number_is_checked_too(self) -> None:
        """from_number is validated like to_number."""
        assert rejected_at("send_text", {**TEXT, "from_number": "+1 555"}) == "/payload/from_number"

    def test_schema_refuses_a_national_number(self) -> None:
        """The schema tells publishers the number must start with +."""
        assert schema_errors("send_text", {**TEXT, "to_number": "8885553333"})


class TestEitherOr:
    def test_both_senders_rejected(self) -> None:
        """from_number and group_id together are refused (check and schema)."""
        payload = {**TEXT, "group_id": G}
        assert rejected_at("send_text", payload) == "/payload/group_id"
        assert schema_errors("send_text", payload)

    def test_no_sender_rejected(self) -> None:
        """Neither from_number nor group_id is refused."""
        payload = {"to_number": "+18885553333", "text_body": "hi"}
        assert rejected_at("send_text", payload) == "/payload"
        assert schema_errors("send_text", payload)

    def test_group_sender_accepted(self) -> None:
        """A group id alone is a valid sender."""
        assert (
            check("send_text", {"to_number": "+18885553333", "group_id": G, "text_body": "x"})["group_id"]
            == G
        )

    @pytest.mark.parametrize("command_type", ["subscribe_series", "initiate_survey"])
    def test_contact_and_number_together_rejected(self, command_type: str) -> None:
        """contact_id and to_number together are refused."""
        payload = {**registry.commands[command_type].example, "contact_id": C, "to_number": "+18885553333"}
        assert rejected_at(command_type, payload) == "/payload/to_number"
        assert schema_errors(command_type, payload)

    def test_sso_needs_exactly_one_user_reference(self) -> None:
        """create_sso_url takes user_uuid or external_id, not both, not neither."""
        assert rejected_at("create_sso_url", {}) == "/payload"
        both = {"user_uuid": "us:abc", "external_id": "x"}
        assert rejected_at("create_sso_url", both) == "/payload/external_id"


class TestPrefixes:
    @pytest.mark.parametrize(
        ("command_type", "payload", "path"),
        [
            ("send_text", {"to_number": "+18885553333", "text_body": "x", "group_id": G[3:]}, "group_id"),
            ("get_user", {"id": "co:abc"}, "id"),
            ("get_contact", {"id": "us:abc"}, "id"),
            ("send_consent_text", {"contact_id": C, "group_id": "co:abc"}, "group_id"),
            ("check_consent", {"contact_id": "gr:abc", "group_id": G}, "contact_id"),
            ("subscribe_series", {"series_id": "sv:abc", "timezone": "UTC", "to_number": "+18885553333",
                                  "group_id": G}, "series_id"),
            ("initiate_survey", {"survey_id": "ts:abc", "contact_id": C, "group_id": G}, "survey_id"),
            ("create_sso_url", {"user_uuid": "co:abc"}, "user_uuid"),
        ],
    )  # fmt: skip
    def test_wrong_prefix_rejected(self, command_type: str, payload: dict[str, Any], path: str) -> None:
        """An id with the wrong type prefix is rejected at its field."""
        assert rejected_at(command_type, payload) == f"/payload/{path}"


class TestTextBody:
    def test_1600_characters_pass(self) -> None:
        """Exactly 1,600 characters is accepted."""
        check("send_text", {**TEXT, "text_body": "x" * 1600})

    def test_1601_characters_rejected(self) -> None:
        """Over 1,600 characters is rejected: Pidj would truncate silently."""
        assert rejected_at("send_text", {**TEXT, "text_body": "x" * 1601}) == "/payload/text_body"

    def test_truncation_accepted_when_asked(self) -> None:
        """allow_truncation lets a long text through."""
        check("send_text", {**TEXT, "text_body": "x" * 2000, "allow_truncation": True})


class TestOtherRules:
    def test_timezone_is_iana_and_case_sensitive(self) -> None:
        """america/denver is not America/Denver."""
        payload = {**registry.commands["subscribe_series"].example, "timezone": "america/denver"}
        assert rejected_at("subscribe_series", payload) == "/payload/timezone"
        assert rejected_at("create_user", {"username": "a", "password": "b", "timezone": "Mars/Base"})

    def test_roles_are_checked_and_kept_for_pipe_joining(self) -> None:
        """Roles must be admin/manager/agent, once each."""
        assert check("create_user", {"username": "a", "password": "b", "roles": ["agent", "admin"]})[
            "roles"
        ] == [
            "agent",
            "admin",
        ]
        assert (
            rejected_at("create_user", {"username": "a", "password": "b", "roles": ["owner"]})
            == "/payload/roles"
        )
        assert rejected_at("create_user", {"username": "a", "password": "b", "roles": ["agent", "agent"]})

    def test_group_name_with_pipe_rejected(self) -> None:
        """A group name containing | would split in the pipe-joined list."""
        payload = {"username": "a", "password": "b", "groups": ["Primary", "A|B"]}
        assert rejected_at("create_user", payload) == "/payload/groups/1"

    def test_sso_next_url_is_base64_encoded(self) -> None:
        """next_url is sent as Base64 in next."""
        checked = check("create_sso_url", {"user_uuid": "us:abc", "next_url": "https://example.com/x"})
        assert base64.b64decode(checked["next"]) == b"https://example.com/x"
        assert "next_url" not in checked

    @pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"ftp://x").decode(), "aGVsbG8="])
    def test_sso_next_must_be_base64_of_a_full_url(self, value: str) -> None:
        """next that is not Base64 of an http(s) URL is rejected."""
        assert rejected_at("create_sso_url", {"user_uuid": "us:abc", "next": value}) == "/payload/next"

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("home_street_1", "x" * 201),
            ("business_city", "y" * 201),
            ("home_state", "Utah"),
            ("home_state", "ZZ"),
            ("business_postal", "1234567"),
            ("home_country", "Atlantis"),
            ("home_country", "XX"),
        ],
    )
    def test_address_fields_checked(self, field: str, value: str) -> None:
        """Address limits, state, postal code and country are refused rather than discarded by Pidj."""
        assert (
            rejected_at("create_contact", {"phone_number": "+18015551111", field: value})
            == f"/payload/{field}"
        )

    @pytest.mark.parametrize(
        ("field", "value"),
        [("home_state", "ut"), ("home_postal", "84101-1234"), ("home_postal", "K1A 0B1"),
         ("home_postal", "SW1A 1AA"), ("home_postal", "2000"), ("home_country", "USA"),
         ("business_country", "gb"), ("home_street_1", "x" * 200)],
    )  # fmt: skip
    def test_valid_address_fields_pass(self, field: str, value: str) -> None:
        """Valid US/CA/UK/AU postal codes, state and country codes pass."""
        check("create_contact", {"phone_number": "+18015551111", field: value})

    def test_blank_clears_on_update(self) -> None:
        """An empty string (clear the field) passes the rules on update."""
        check("update_contact", {"id": C, "home_state": "", "timezone": "", "email_address": ""})

    def test_task_topic_plain_text_within_3200(self) -> None:
        """HTML and topics over 3,200 characters are refused."""
        base = {"channel": "ticket"}
        assert rejected_at("initiate_task", {**base, "topic": "<b>hi</b>"}) == "/payload/topic"
        assert rejected_at("initiate_task", {**base, "topic": "x" * 3201}) == "/payload/topic"
        check("initiate_task", {**base, "topic": "a < b and c > d"})

    def test_check_is_idempotent(self) -> None:
        """Running a check twice (dispatcher, then handler) gives the same payload."""
        for command_type in PIDJ:
            spec = registry.commands[command_type]
            if spec.check is not None:
                once = spec.check(dict(spec.example))
                assert spec.check(dict(once)) == once

    def test_rules_e164_helper(self) -> None:
        """rules.e164 formats and refuses."""
        assert rules.e164("+44 20 7946 0000", "x") == "+442079460000"
        with pytest.raises(InvalidPayload):
            rules.e164(None, "x")


class TestPhoneProperties:
    @given(st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)))
    def test_any_region_example_round_trips_to_e164(self, region: str) -> None:
        """Any country's example number, written in international format, is sent as its E.164 form."""
        number = phonenumbers.example_number(region)
        assume(number is not None)
        assert number is not None
        written = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        expected = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        assert rules.e164(written, "to_number") == expected

    @given(st.text(max_size=20))
    def test_arbitrary_text_is_e164_or_invalid_payload(self, text: str) -> None:
        """Whatever the input, the rule returns E.164 or raises InvalidPayload, nothing else."""
        try:
            result = rules.e164(text, "to_number")
        except InvalidPayload as exc:
            assert exc.path == "/payload/to_number"
        else:
            assert re.fullmatch(r"\+[1-9]\d{6,14}", result)
