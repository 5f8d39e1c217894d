"""Validation with the JSON Schemas in ``schemas/`` as they are (no second copy).

Errors become :class:`InvalidPayload` with the JSON pointer of the field that
failed (``/payload/to_number``), so a publisher knows what to fix.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs

import schemas
from worker.errors import InvalidPayload

_MAX_MESSAGE = 300
_MAX_ERRORS = 10


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


def _describe(error: Any, prefix: str, schema: dict[str, Any]) -> dict[str, str]:
    parts = list(error.instance_path)
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        parts.append(kind.property)
    message = str(error.message)
    if isinstance(
        kind,
        jsonschema_rs.ValidationErrorKind.OneOfNotValid
        | jsonschema_rs.ValidationErrorKind.OneOfMultipleValid,
    ):
        message = _choice_message(schema, error) or message
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
            for error in self._validator.iter_errors(instance):
                found.append(_describe(error, self.prefix, self.schema))
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
    """The envelope validator and one payload validator per command type."""

    def __init__(self, command_types: list[str], schema_names: dict[str, str]) -> None:
        self.envelope = SchemaValidator(schemas.load("command"))
        self.payloads = {
            command_type: SchemaValidator(schemas.load(schema_names[command_type]), prefix="/payload")
            for command_type in command_types
        }
