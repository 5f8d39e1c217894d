"""ERROR_CODES (the contract's list) matches every error code the worker and handlers can raise."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from tests.asyncapi.conftest import ROOT
from worker import envelope
from worker.asyncapi import ALSO_FAILED, ERROR_CODES

REJECTING = frozenset({"CommandRejected", "InvalidPayload", "_reject", "raise_invalid"})
"""Calls whose code ends a command as ``rejected``; every other raised code ends it as ``failed``."""
REJECTING_CLASSES = frozenset({"CommandRejected", "InvalidPayload"})
CHECK_MODULES = frozenset({"validation.py", "rules.py", "common.py"})
"""Handler modules holding the commands' ``check`` functions, which run before the claim (and may
reject). Every other handler module runs inside a handler, after the claim: a rejection raised
there ends the command ``failed`` (a handler cannot reject)."""


def _called_name(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ""


def _codes_in(tree: ast.AST, *, can_reject: bool = True) -> list[tuple[str, str]]:
    """(code, status) for each literal code: ``code="x"`` and ``_reject("x", ...)`` calls, ``code = "x"`` class attributes."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            status = "rejected" if can_reject and _called_name(node) in REJECTING else "failed"
            for keyword in node.keywords:
                if (
                    keyword.arg == "code"
                    and isinstance(keyword.value, ast.Constant)
                    and isinstance(keyword.value.value, str)
                ):
                    found.append((keyword.value.value, status))
            if _called_name(node) == "_reject" and node.args and isinstance(node.args[0], ast.Constant):
                found.append((str(node.args[0].value), "rejected" if can_reject else "failed"))
            if can_reject or _called_name(node) not in REJECTING_CLASSES:
                continue
            if not any(k.arg == "code" for k in node.keywords):
                found.append(("invalid_payload", "failed"))  # InvalidPayload's own code
        elif isinstance(node, ast.ClassDef):
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            status = "rejected" if node.name in REJECTING_CLASSES or bases & REJECTING_CLASSES else "failed"
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and [t.id for t in statement.targets if isinstance(t, ast.Name)] == ["code"]
                    and isinstance(statement.value, ast.Constant)
                ):
                    found.append((str(statement.value.value), status))
    return found


def _source_files() -> list[Path]:
    """The worker and handler modules; simulators (sandbox*, simulator) speak for the vendors, not for us."""
    files = [*sorted((ROOT / "worker").rglob("*.py")), *sorted((ROOT / "handlers").rglob("*.py"))]
    return [f for f in files if not f.name.startswith("sandbox") and f.name != "simulator.py"]


def scan_error_codes() -> dict[str, set[str]]:
    """Each error code found in the source, and the statuses it can end a command with."""
    codes: dict[str, set[str]] = defaultdict(set)
    for path in _source_files():
        in_handler = path.is_relative_to(ROOT / "handlers") and path.name not in CHECK_MODULES
        for code, status in _codes_in(ast.parse(path.read_text(), str(path)), can_reject=not in_handler):
            codes[code].add(status)
    # SwitchboardError's own "error" is a placeholder every subclass overrides.
    codes.pop("error", None)
    return dict(codes)


def test_scan_finds_codes_from_every_kind_of_site() -> None:
    """The scan sees keyword codes, _reject() codes and class attributes (so an empty scan cannot pass)."""
    found = scan_error_codes()
    assert {"vendor_timeout", "routing_key_mismatch", "rate_limited", "invalid_payload"} <= set(found)
    assert found["routing_key_mismatch"] == {"rejected"}
    assert found["vendor_timeout"] == {"failed"}


def test_every_raised_code_is_in_the_contract_with_its_status() -> None:
    """Every code raised in worker/ and handlers/ is listed, with the event status that carries it."""
    listed = {
        code: {status} | ({"failed"} if code in ALSO_FAILED else set())
        for code, (status, _) in ERROR_CODES.items()
    }
    assert scan_error_codes() == listed


def test_envelope_rejection_table_is_in_the_contract() -> None:
    """The codes in worker/envelope.py's docstring table are rejection codes of the contract."""
    assert envelope.__doc__ is not None
    table = re.findall(r"^``([a-z0-9_]+)``\s", envelope.__doc__, flags=re.MULTILINE)
    assert len(table) >= 10
    for code in table:
        assert ERROR_CODES[code][0] == "rejected", code


def test_every_code_has_a_description() -> None:
    """Each listed code says what it means in a sentence."""
    for code, (status, description) in ERROR_CODES.items():
        assert status in ("rejected", "failed"), code
        assert description.endswith(".") and len(description) > 15, code
