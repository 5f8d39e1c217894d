"""Fixtures for the deploy tests that need the real broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy.broker import Imported, imported_definitions, rabbitmqctl_usable


@pytest.fixture(scope="session")
def imported() -> Iterator[Imported]:
    """deploy/rabbitmq/definitions.json, imported under throwaway names (skips without rabbitmqctl)."""
    if not rabbitmqctl_usable():
        pytest.skip("rabbitmqctl cannot reach a local RabbitMQ node")
    with imported_definitions() as target:
        yield target
