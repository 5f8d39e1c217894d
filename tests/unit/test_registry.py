"""The registry is built from vendor objects, explicitly; declaring a command registers nothing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from handlers import PEERLY, PIDJ, VENDORS, build_registry
from worker.registry import CommandContext, Commands, DuplicateRegistration, Registry, Vendor


class Account(BaseModel):
    base_url: str = "http://vendor.invalid"


class Client:
    async def close(self) -> None:
        pass


def _vendor(name: str, commands: Commands) -> Vendor[Client]:
    return Vendor(
        name=name, account_model=Account, make_client=lambda account, http: Client(), commands=commands
    )


def _declared(*types: str) -> Commands:
    commands = Commands()

    async def handler(payload: dict[str, Any], ctx: CommandContext[Client]) -> dict[str, Any]:
        """Does nothing."""
        return {}

    for command_type in types:
        commands.command(command_type, safe_to_repeat=True)(handler)
    return commands


def test_the_vendor_object_names_the_vendor_of_its_commands() -> None:
    """Each CommandSpec's vendor comes from the vendor object listing it, not from the declaration."""
    registry = Registry([_vendor("acme", _declared("ping", "pong"))])
    assert {t: s.vendor for t, s in registry.commands.items()} == {"ping": "acme", "pong": "acme"}
    assert registry.types_of("acme") == ["ping", "pong"]
    assert (
        registry.commands["ping"].schema == "ping"
        and registry.commands["ping"].description == "Does nothing."
    )


def test_declaring_registers_nothing() -> None:
    """A Commands collector is a plain list: two registries built from the same vendors are independent."""
    _declared("never_listed")
    assert "never_listed" not in build_registry().commands
    first, second = build_registry(), build_registry()
    first.commands.pop("send_text")
    assert "send_text" in second.commands


def test_duplicate_type_fails_at_build_and_adds_nothing() -> None:
    """Two vendors declaring one type: building the registry raises, naming both; the second vendor is not half-added."""
    registry = Registry([_vendor("acme", _declared("ping"))])
    with pytest.raises(DuplicateRegistration, match=r"'ping' is registered twice \(acme and other\)"):
        registry.add(_vendor("other", _declared("pong", "ping")))
    assert "other" not in registry.vendors and "pong" not in registry.commands
    with pytest.raises(DuplicateRegistration, match="'ping' is registered twice"):
        Registry([_vendor("acme", _declared("ping", "ping"))])


def test_duplicate_vendor_fails() -> None:
    """One vendor listed twice in the composition root fails instead of shadowing the first."""
    with pytest.raises(DuplicateRegistration, match="vendor 'pidj' is registered twice"):
        Registry([PIDJ, PIDJ])


def test_composition_root_lists_every_vendor_once() -> None:
    """handlers.VENDORS is the one list; every command belongs to the vendor whose package declares it."""
    registry = build_registry()
    assert [v.name for v in VENDORS] == ["peerly", "pidj"]
    assert registry.vendors == {"peerly": PEERLY, "pidj": PIDJ}
    for spec in registry.commands.values():
        package = spec.handler.__module__.split(".")[1]
        assert spec.vendor == package, spec.type
    assert len(registry.commands) == sum(len(v.commands) for v in VENDORS)
