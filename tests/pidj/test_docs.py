"""docs/commands-pidj.md stays in step with the registry."""

from __future__ import annotations

import json
import re
from pathlib import Path

from handlers import build_registry

registry = build_registry()

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands-pidj.md"


def sections() -> dict[str, str]:
    parts = re.split(r"^## `([a-z_]+)`$", DOC.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_command_has_a_section_with_its_example() -> None:
    """Each Pidj command has a section whose JSON example is the registered example."""
    found = sections()
    assert set(found) == set(registry.types_of("pidj"))
    for command_type, text in found.items():
        block = re.search(r"```json\n(.*?)\n```", text, flags=re.DOTALL)
        assert block is not None, command_type
        assert json.loads(block.group(1)) == registry.commands[command_type].example, command_type


def test_safety_in_docs_matches_registry() -> None:
    """The section says safe/unsafe exactly as registered."""
    for command_type, text in sections().items():
        expected = "safe" if registry.commands[command_type].safe_to_repeat else "**unsafe**"
        assert f"- {expected} to repeat." in text.splitlines()[2], command_type
