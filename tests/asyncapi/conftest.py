"""The AsyncAPI document as built from the registry, and validators into it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from handlers import build_registry
from worker.asyncapi import build_document
from worker.registry import Registry

registry = build_registry()

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
DOCS_COPY = ROOT / "docs" / "asyncapi.json"
SPEC_SCHEMA = HERE / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="session")
def full_registry() -> Registry:
    return registry


@pytest.fixture(scope="session")
def document(full_registry: Registry) -> dict[str, Any]:
    return build_document(full_registry)


@pytest.fixture(scope="session")
def spec_validator() -> Any:
    return jsonschema_rs.validator_for(json.loads(SPEC_SCHEMA.read_text()))


def schema_in(document: dict[str, Any], pointer: str) -> Any:
    """A draft-07 validator for the schema at ``pointer`` (``#/components/...``), with the
    document's components in place so its references resolve as an AsyncAPI tool resolves them."""
    return jsonschema_rs.Draft7Validator({"$ref": pointer, "components": document["components"]})
