"""Typed command helpers and local validation: no broker needed (nothing here connects)."""

from __future__ import annotations

import inspect

import pytest

import schemas
from handlers import build_registry
from tests.client.broker_fakes import TEST_SCHEMA
from worker.client import PublishError, Switchboard
from worker.errors import CommandRejected, InvalidPayload

registry = build_registry()

# Nothing in this module publishes: kombu connects lazily, and every call here fails before.
UNUSED_URL = "amqp://nobody:nothing@127.0.0.1:1/%2F"


@pytest.fixture
def sb() -> Switchboard:
    return Switchboard(UNUSED_URL, payload_schemas={"echo": TEST_SCHEMA})


class TestHelperSignature:
    def test_signature_lists_payload_fields_required_first(self, sb: Switchboard) -> None:
        """A helper's signature has one keyword per schema property; required ones have no default."""
        signature = inspect.signature(sb.commands.echo)
        params = signature.parameters
        assert list(params) == ["to_number", "text", "tags", "from_", "account_"]
        assert params["to_number"].default is inspect.Parameter.empty
        assert params["tags"].default is None
        assert params["text"].annotation is str
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())

    def test_misspelled_keyword_is_a_type_error_with_a_suggestion(self, sb: Switchboard) -> None:
        """A keyword that is not a field fails like a Python call, suggesting the closest field."""
        with pytest.raises(TypeError, match="argument 'to_numbr'; did you mean 'to_number'"):
            sb.commands.echo(to_numbr="+15551234567", text="hi")

    def test_missing_required_field_is_a_type_error(self, sb: Switchboard) -> None:
        """Leaving out a required field fails before anything is built or sent."""
        with pytest.raises(TypeError, match="text"):
            sb.commands.echo(to_number="+15551234567")

    def test_payload_maps_python_names_back_to_schema_names(self, sb: Switchboard) -> None:
        """from_ and account_ become 'from' and 'account'; None fields are left out."""
        payload = sb.commands.echo.payload(to_number="+1555", text="t", from_="x", account_="y", tags=None)
        assert payload == {"to_number": "+1555", "text": "t", "from": "x", "account": "y"}

    def test_unknown_helper_lists_the_known_ones(self, sb: Switchboard) -> None:
        """commands.<unknown> raises AttributeError naming the types that exist."""
        with pytest.raises(AttributeError, match=r"no command type 'nope' \(known: echo\)"):
            _ = sb.commands.nope
        assert dir(sb.commands) == ["echo"]


class TestLocalValidation:
    def test_bad_value_reports_path_and_rule_without_the_value(self, sb: Switchboard) -> None:
        """A value breaking a rule gives its JSON pointer and the rule's name, never the value itself."""
        with pytest.raises(InvalidPayload) as caught:
            sb.send("echo", {"to_number": "+15551234567", "text": "", "tags": ["ok", 7]})
        errors = caught.value.details["errors"]
        assert {e["path"] for e in errors} == {"/payload/text", "/payload/tags/1"}
        assert "minLength" in str(errors) and "type" in str(errors)
        assert caught.value.code == "invalid_payload"

    def test_bad_account_alias_is_rejected_with_its_path(self, sb: Switchboard) -> None:
        """The envelope is checked too: an account alias with a space fails at /account."""
        with pytest.raises(CommandRejected) as caught:
            sb.send("echo", {"to_number": "+15551234567", "text": "t"}, account="not valid")
        assert caught.value.details["path"] == "/account"

    def test_validation_can_be_turned_off(self) -> None:
        """validate=False skips the schema check (the publish then fails on the unreachable broker)."""
        loose = Switchboard(UNUSED_URL, validate=False, retry_policy={"max_retries": 0})
        with pytest.raises(PublishError):
            loose.send("anything", {"whatever": 1})

    def test_unreachable_broker_is_a_publish_error_for_call_too(self) -> None:
        """call() against a broker that never answers raises PublishError (not a kombu error)."""
        client = Switchboard(
            UNUSED_URL, payload_schemas={"echo": TEST_SCHEMA}, retry_policy={"max_retries": 0}
        )
        with pytest.raises(PublishError):
            client.call("echo", {"to_number": "+15551234567", "text": "t"}, timeout=1)


@pytest.mark.skipif(not schemas.payload_names(), reason="no payload schemas in schemas/v1/payloads yet")
@pytest.mark.parametrize("name", schemas.payload_names())
class TestRealSchemas:
    def test_helper_matches_the_schema(self, name: str) -> None:
        """Each installed payload schema yields a helper with exactly its properties and required fields."""
        schema = schemas.load(name)
        helper = getattr(Switchboard(UNUSED_URL).commands, name)
        assert set(helper.fields.values()) == set(schema.get("properties", {}))
        required = {
            helper.fields_by_schema_name[field]
            for field in schema.get("required", [])
            if field in helper.fields_by_schema_name
        }
        params = inspect.signature(helper).parameters
        assert {n for n, p in params.items() if p.default is inspect.Parameter.empty} == required

    def test_registered_example_passes_and_round_trips(self, name: str) -> None:
        """A registered command's example passes the client's check and round-trips through its helper."""
        spec = registry.commands.get(name)
        if spec is None:
            pytest.skip(f"{name} has no registered example")
        assert spec.schema == name, "the client finds a command's schema by its type"
        client = Switchboard(UNUSED_URL)
        helper = getattr(client.commands, name)
        python_fields = {helper.fields_by_schema_name[k]: v for k, v in spec.example.items()}
        assert helper.payload(**python_fields) == spec.example
        assert (
            client._envelope(name, spec.example, id="x", account=None, meta=None)["payload"] == spec.example
        )


def test_every_registered_command_has_a_helper() -> None:
    """Every command type the worker runs can be published with a helper (its schema is named after it)."""
    missing = sorted(set(registry.commands) - set(dir(Switchboard(UNUSED_URL).commands)))
    assert not missing
