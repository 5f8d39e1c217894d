"""The AsyncAPI 3.0 document: valid, in sync with docs/, complete, and faithful to the schema files."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest

import schemas
from tests.asyncapi.conftest import DOCS_COPY, ROOT, schema_in
from worker import events, topology
from worker.asyncapi import ALSO_FAILED, ERROR_CODES, render
from worker.registry import Registry


def test_document_is_valid_asyncapi_3(document: dict[str, Any], spec_validator: Any) -> None:
    """The document validates against the official AsyncAPI 3.0.0 JSON Schema."""
    errors = [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in spec_validator.iter_errors(document)
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("where", "key", "bad"),
    [
        (("channels", "command.send_text", "bindings", "amqp"), "is", "exchange"),
        (("operations", "send_send_text", "bindings", "amqp"), "deliveryMode", 3),
        (("operations", "send_send_text"), "action", "publish"),
        (("components", "schemas", "send_text_payload"), "type", 5),
    ],
)
def test_spec_validator_catches_a_broken_document(
    document: dict[str, Any], spec_validator: Any, where: tuple[str, ...], key: str, bad: Any
) -> None:
    """The vendored spec schema really checks bindings, operations and embedded schemas."""
    broken = copy.deepcopy(document)
    node = broken
    for part in where:
        node = node[part]
    node[key] = bad
    assert not spec_validator.is_valid(broken)


def test_docs_copy_is_in_sync(full_registry: Registry) -> None:
    """docs/asyncapi.json is what build_document produces now (python -m worker.asyncapi > docs/asyncapi.json)."""
    assert DOCS_COPY.read_text() == render(full_registry), (
        "regenerate: python -m worker.asyncapi > docs/asyncapi.json"
    )


def test_module_entry_point_prints_the_document(full_registry: Registry) -> None:
    """`python -m worker.asyncapi` prints exactly the rendered document."""
    printed = subprocess.run(
        [sys.executable, "-m", "worker.asyncapi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert printed.stdout == render(full_registry)


def test_every_registered_command_has_a_message_channel_and_operation(
    document: dict[str, Any], full_registry: Registry
) -> None:
    """Each command type: a message, a channel whose address is its routing key, a send operation."""
    messages, channels, operations = (
        document["components"]["messages"],
        document["channels"],
        document["operations"],
    )
    types = sorted(full_registry.commands)
    assert sorted(k.removeprefix("command.") for k in messages if k.startswith("command.")) == types
    for command_type in types:
        channel = channels[f"command.{command_type}"]
        assert channel["address"] == command_type
        assert channel["messages"] == {
            command_type: {"$ref": f"#/components/messages/command.{command_type}"}
        }
        operation = operations[f"send_{command_type}"]
        assert operation["action"] == "send"
        assert operation["channel"] == {"$ref": f"#/channels/command.{command_type}"}
        assert operation["reply"]["channel"] == {"$ref": f"#/channels/events.{command_type}"}


def test_event_messages_per_type_and_status(document: dict[str, Any], full_registry: Registry) -> None:
    """Events: succeeded/failed/rejected for every type, progress and deferred where they occur, invalid.rejected."""
    progress = {"upload_list"}
    deferred = {t for t, spec in full_registry.commands.items() if spec.recipient is not None}
    assert "send_text" in deferred
    messages = document["components"]["messages"]
    expected = {"event.invalid.rejected"}
    for command_type in full_registry.commands:
        statuses = {"succeeded", "failed", "rejected"}
        statuses |= {"progress"} if command_type in progress else set()
        statuses |= {"deferred"} if command_type in deferred else set()
        expected |= {f"event.{command_type}.{status}" for status in statuses}
        channel = document["channels"][f"events.{command_type}"]
        assert channel["address"] == f"{command_type}.{{status}}"
        assert set(channel["parameters"]["status"]["enum"]) == statuses
    assert {k for k in messages if k.startswith("event.")} == expected
    assert document["channels"]["events.invalid"]["address"] == "invalid.rejected"
    for name in expected:
        assert messages[name]["bindings"]["amqp"]["messageType"] == name.removeprefix("event.")


def test_payload_schemas_are_the_schema_files(document: dict[str, Any], full_registry: Registry) -> None:
    """Each payload schema is embedded from schemas/, not written again: same fields, same rules, same $id."""
    component_schemas = document["components"]["schemas"]
    for command_type, spec in full_registry.commands.items():
        source = schemas.load(spec.schema)
        embedded = component_schemas[f"{command_type}_payload"]
        assert embedded["x-schema-id"] == source["$id"]
        assert embedded["x-schema-title"] == source["title"]
        assert embedded["title"] == f"{command_type} payload"
        assert "$schema" not in embedded and "$id" not in embedded
        assert embedded["properties"].keys() == source["properties"].keys()
        assert embedded.get("required") == source.get("required")
        assert embedded["description"] == source["description"]
    assert component_schemas["command"]["x-schema-id"] == schemas.load("command")["$id"]
    assert component_schemas["event"]["x-schema-id"] == schemas.load("event")["$id"]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _resolve(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_inside_the_document(document: dict[str, Any]) -> None:
    """Every $ref is a local pointer to something that exists; no embedded $id or $schema is left."""
    references = [node["$ref"] for node in _walk(document) if isinstance(node.get("$ref"), str)]
    assert references
    for reference in references:
        assert reference.startswith("#/"), reference
        _resolve(document, reference)
    assert not [node for node in _walk(document["components"]) if "$id" in node or "$schema" in node]


def _nested_objects(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        yield path
        for key, item in value.items():
            yield from _nested_objects(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nested_objects(item, (*path, index))


def test_command_examples_validate_as_the_worker_validates(
    document: dict[str, Any], full_registry: Registry
) -> None:
    """Examples validate against the document; an unknown field at any depth is refused by both the document
    and the worker's own schema (references into $defs resolve the same way)."""
    checked = 0
    for command_type, spec in sorted(full_registry.commands.items()):
        in_document = schema_in(document, f"#/components/schemas/{command_type}_command")
        worker = jsonschema_rs.validator_for(schemas.load(spec.schema))
        command = {"id": "c-1", "type": command_type, "payload": spec.example}
        assert worker.is_valid(spec.example)
        assert in_document.is_valid(command)
        assert not in_document.is_valid({**command, "type": "other_type"})
        for path in _nested_objects(spec.example):
            mutated = copy.deepcopy(spec.example)
            target = mutated
            for part in path:
                target = target[part]
            target["zz_not_a_field"] = 1
            assert in_document.is_valid({**command, "payload": mutated}) == worker.is_valid(mutated), (
                command_type,
                path,
            )
            checked += 1
    assert checked > len(full_registry.commands)


def test_real_events_validate_against_their_messages(document: dict[str, Any]) -> None:
    """Events as the worker builds them match their message; a code from the wrong family does not."""

    def event(status: str, **extra: Any) -> dict[str, Any]:
        return events.build(
            command_id="c-1",
            type="send_text",
            account="default",
            status=status,
            attempts=1,
            duration_ms=3.0,
            meta={},
            **extra,
        )

    def message(name: str) -> Any:
        return schema_in(document, f"#/components/messages/{name}/payload")

    def error(code: str) -> dict[str, Any]:
        return {"code": code, "message": "m", "retryable": False, "details": {}}

    assert message("event.send_text.succeeded").is_valid(event("succeeded", result={"status": "sent"}))
    assert not message("event.send_text.succeeded").is_valid(event("succeeded"))
    assert message("event.send_text.failed").is_valid(event("failed", error=error("vendor_rejected")))
    assert not message("event.send_text.failed").is_valid(event("failed", error=error("not_json")))
    assert message("event.send_text.rejected").is_valid(event("rejected", error=error("invalid_payload")))
    assert not message("event.send_text.rejected").is_valid(event("rejected", error=error("no_such_code")))
    assert not message("event.send_text.rejected").is_valid(event("failed", error=error("invalid_payload")))
    unreadable = events.build(
        command_id=None,
        type="invalid",
        account="default",
        status="rejected",
        attempts=0,
        duration_ms=0,
        meta={},
        error=error("not_json"),
    )
    assert message("event.invalid.rejected").is_valid(unreadable)


def test_amqp_bindings(document: dict[str, Any]) -> None:
    """Topic exchanges, durable, not auto-deleted, vhost /; persistent delivery; JSON messages."""
    for name, channel in document["channels"].items():
        amqp = channel["bindings"]["amqp"]
        assert amqp["bindingVersion"] == "0.3.0"
        if name.startswith(("command.", "events.")):
            exchange = topology.COMMANDS_EXCHANGE if name.startswith("command.") else topology.EVENTS_EXCHANGE
            assert amqp["is"] == "routingKey"
            assert amqp["exchange"] == {
                "name": exchange,
                "type": "topic",
                "durable": True,
                "autoDelete": False,
                "vhost": "/",
            }
    for name, operation in document["operations"].items():
        if operation["action"] == "send":
            assert operation["bindings"]["amqp"]["deliveryMode"] == 2, name
    for name, message in document["components"]["messages"].items():
        assert message["contentType"] == "application/json", name
    assert document["channels"]["command.send_text"]["bindings"]["amqp"]["x-exchange-arguments"] == {
        "alternate-exchange": topology.UNROUTED_EXCHANGE
    }


def test_queues(document: dict[str, Any], full_registry: Registry) -> None:
    """The vendor queues (quorum, with their commands), switchboard.unrouted and switchboard.dead are described."""
    queues = {
        c["address"]: c for c in document["channels"].values() if c["bindings"]["amqp"]["is"] == "queue"
    }
    vendor_queues = {topology.vendor_queue(vendor) for vendor in full_registry.vendors}
    assert set(queues) == vendor_queues | {topology.DEAD_QUEUE, topology.UNROUTED_QUEUE}
    for vendor in full_registry.vendors:
        amqp = queues[topology.vendor_queue(vendor)]["bindings"]["amqp"]
        assert amqp["queue"]["durable"] is True
        assert amqp["x-queue-arguments"]["x-queue-type"] == "quorum"
        assert sorted(b["routingKey"] for b in amqp["x-bound-to"]) == full_registry.types_of(vendor)
        assert sorted(queues[topology.vendor_queue(vendor)]["messages"]) == full_registry.types_of(vendor)


def test_error_code_enums(document: dict[str, Any]) -> None:
    """error.code is an enum with a description per code, split into rejection and failure codes."""
    component_schemas = document["components"]["schemas"]
    for name, status in (("rejection_code", "rejected"), ("failure_code", "failed")):
        schema = component_schemas[name]
        listed = {code for code, (where, _) in ERROR_CODES.items() if where == status}
        assert schema["enum"] == sorted(listed | (ALSO_FAILED if status == "failed" else set()))
        assert schema["x-enum-descriptions"] == [ERROR_CODES[code][1] for code in schema["enum"]]
        assert all(f"`{code}`" in schema["description"] for code in schema["enum"])


def test_cli_prints_the_document(full_registry: Registry) -> None:
    """`switchboard schemas --asyncapi` prints exactly what docs/asyncapi.json holds."""
    from click.testing import CliRunner

    from worker.cli import main

    runner = CliRunner()
    if "--asyncapi" not in runner.invoke(main, ["schemas", "--help"]).output:
        pytest.skip("switchboard schemas --asyncapi is not wired yet")
    printed = runner.invoke(main, ["schemas", "--asyncapi"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == render(full_registry)
