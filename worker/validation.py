"""Validation with the JSON Schemas in ``schemas/`` as they are (no second copy).

Errors become :class:`InvalidPayload` with the JSON pointer of the field that
failed (``/payload/to_number``), so a publisher knows what to fix.

A field the schema marks ``writeOnly`` (a password) is a secret: no message
carries its value. An error about the field itself names the rule it broke,
not the value; an error about an enclosing object (whose text would quote the
whole object) has every secret value replaced by ``"***"``. The messages go
into the rejected event, the dead letter's headers and the logs, so this is
the one place to stop them.

No message carries the value that broke a rule either (a phone number, a
text): ``"555" does not match "^\\+..."`` becomes ``value does not match
"^\\+..." (rule 'pattern')``. The publishing client (``worker.client``) validates with this
module, so a publisher sees the message the worker would have rejected with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema_rs
import orjson

import schemas
from worker.errors import CommandRejected, InvalidPayload

_MAX_MESSAGE = 300
_MAX_ERRORS = 10
_HIDDEN = '"***"'


def _pointer(parts: list[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _at(schema: Any, path: list[str | int]) -> Any:
    for part in path:
        try:
            schema = schema[part]
        except (KeyError, IndexError, TypeError):
            return None
    return schema


def _choice_message(schema: dict[str, Any], error: Any) -> str | None:
    """ "exactly one of from_number, group_id" for a oneOf of single ``required``s.

    jsonschema's own text repeats the whole value and names no field."""
    branches = _at(schema, list(error.schema_path))
    if not isinstance(branches, list):
        return None
    names = [b["required"][0] for b in branches if isinstance(b, dict) and len(b.get("required", [])) == 1]
    if len(names) != len(branches):
        return None
    listed = ", ".join(names)
    if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.OneOfMultipleValid):
        return f"give only one of {listed}, not several"
    return f"exactly one of {listed} is required"


def _in_write_only(schema: Any, schema_path: list[str | int]) -> bool:
    """Whether the failing rule sits inside a ``writeOnly`` subschema."""
    for end in range(len(schema_path) + 1):
        node = _at(schema, schema_path[:end])
        if isinstance(node, dict) and node.get("writeOnly") is True:
            return True
    return False


def _resolve(root: dict[str, Any], node: Any) -> Any:
    ref = node.get("$ref") if isinstance(node, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        return _at(root, [part.replace("~1", "/").replace("~0", "~") for part in ref[2:].split("/")])
    return node


def secret_values(root: dict[str, Any], instance: Any, node: Any = None, depth: int = 0) -> set[str]:
    """The values in ``instance`` that the schema marks ``writeOnly``, as text (for scrubbing)."""
    node = _resolve(root, root if node is None else node)
    found: set[str] = set()
    if not isinstance(node, dict) or depth > 32:
        return found
    if node.get("writeOnly") is True and instance is not None and not isinstance(instance, bool):
        text = instance if isinstance(instance, str) else orjson.dumps(instance).decode()
        if text:
            found.add(text)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for branch in node.get(keyword) or []:
            found |= secret_values(root, instance, branch, depth + 1)
    if isinstance(instance, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name in instance:
                found |= secret_values(root, instance[name], sub, depth + 1)
    elif isinstance(instance, list) and isinstance(node.get("items"), dict):
        for item in instance[:1000]:
            found |= secret_values(root, item, node["items"], depth + 1)
    return found


def _scrub(message: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(orjson.dumps(secret).decode(), _HIDDEN).replace(secret, "***")
    return message


def _without_value(error: Any) -> str:
    """The message with the failing value, which it starts with, replaced by "value", and the rule named."""
    message, instance = str(error.message), error.instance
    if isinstance(instance, dict | list):
        return message  # names fields (required, additionalProperties) or is cut short below
    try:
        shown = orjson.dumps(instance).decode()
    except TypeError:
        return message
    if message.startswith(shown):
        message = "value" + message[len(shown) :]
    return f"{message} (rule {error.kind.name!r})"


def _describe(
    error: Any, prefix: str, schema: dict[str, Any], secrets: set[str] | None = None
) -> dict[str, str]:
    parts = list(error.instance_path)
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        parts.append(kind.property)
    schema_path = list(error.schema_path)
    if _in_write_only(schema, schema_path):
        rule = schema_path[-1] if schema_path else "schema"
        return {
            "path": prefix + _pointer(parts),
            "message": f"value breaks the rule {rule!r} (not shown: the field is write-only)",
        }
    message = _without_value(error)
    if isinstance(
        kind,
        jsonschema_rs.ValidationErrorKind.OneOfNotValid
        | jsonschema_rs.ValidationErrorKind.OneOfMultipleValid,
    ):
        message = _choice_message(schema, error) or message
    if secrets:
        message = _scrub(message, secrets)
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "…"
    return {"path": prefix + _pointer(parts), "message": message}


class SchemaValidator:
    """One compiled schema; ``prefix`` is where the validated value sits."""

    def __init__(self, schema: dict[str, Any], *, prefix: str = "") -> None:
        self._validator = jsonschema_rs.validator_for(schema, validate_formats=True)
        self.schema = schema
        self.prefix = prefix

    def errors(self, instance: Any) -> list[dict[str, str]]:
        try:
            if self._validator.is_valid(instance):
                return []
            found = []
            secrets = secret_values(self.schema, instance)
            for error in self._validator.iter_errors(instance):
                found.append(_describe(error, self.prefix, self.schema, secrets))
                if len(found) >= _MAX_ERRORS:
                    break
        except ValueError:
            # jsonschema_rs stops at its recursion limit: say so instead of crashing.
            return [{"path": self.prefix, "message": "value is nested too deeply to validate"}]
        # Deepest path first: "/payload/to_number" says more than "/payload".
        found.sort(key=lambda e: -e["path"].count("/"))
        return found

    def validate(self, instance: Any, *, code: str = "invalid_payload") -> None:
        errors = self.errors(instance)
        if errors:
            first = errors[0]
            raise_invalid(first["message"], first["path"], code=code, errors=errors)


def raise_invalid(message: str, path: str, *, code: str, errors: list[dict[str, str]]) -> None:
    error = InvalidPayload(f"{path or '/'}: {message}", path=path or "/", code=code)
    error.details["errors"] = errors
    raise error


class Validators:
    """The envelope validator and one payload validator per command type.

    The worker and the publishing client check a command with these, in this order:
    :meth:`check_envelope`, :meth:`check_type`, :meth:`check_payload`.
    """

    def __init__(self, command_types: list[str], schema_names: dict[str, str]) -> None:
        self.envelope = SchemaValidator(schemas.load("command"))
        self.payloads = {
            command_type: SchemaValidator(schemas.load(schema_names[command_type]), prefix="/payload")
            for command_type in command_types
        }

    @classmethod
    def of_schemas(cls, payload_schemas: dict[str, dict[str, Any]]) -> Validators:
        """Validators for the given payload schemas (by command type) instead of the installed files."""
        validators = cls([], {})
        validators.payloads = {
            command_type: SchemaValidator(schema, prefix="/payload")
            for command_type, schema in payload_schemas.items()
        }
        return validators

    def check_envelope(self, document: Any) -> None:
        """Raise ``invalid_envelope`` with the first error's path (all of them in ``errors``)."""
        errors = self.envelope.errors(document)
        if errors:
            first = errors[0]
            path = first["path"] or "/"
            raise CommandRejected(
                f"{path}: {first['message']}",
                code="invalid_envelope",
                details={"path": path, "errors": errors},
            )

    def check_type(self, command_type: str) -> None:
        if command_type not in self.payloads:
            raise CommandRejected(
                f"unknown command type {command_type!r}", code="unknown_type", details={"path": "/type"}
            )

    def check_payload(
        self, command_type: str, payload: Any, check: Callable[[Any], Any] | None = None
    ) -> Any:
        """Schema, then the command's own ``check``; returns the (normalised) payload."""
        self.payloads[command_type].validate(payload)
        return payload if check is None else check(payload)
