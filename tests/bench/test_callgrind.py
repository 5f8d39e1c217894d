"""``python -m bench --callgrind``: the worker's command line under callgrind, and a clear stop without valgrind."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import procs


def test_without_valgrind_the_bench_stops_at_once_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_main.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="--callgrind needs valgrind and callgrind_control"):
        bench_main.main(["--only", "worker", "--callgrind"])


def test_the_worker_runs_uninstrumented_until_it_is_ready() -> None:
    """Start-up is not counted: instrumentation starts off and is switched on once /readyz answers."""
    prefix = procs.callgrind_prefix(Path("/tmp/cg"))
    assert prefix[:2] == ["valgrind", "--tool=callgrind"]
    assert "--instr-atstart=no" in prefix
    assert "--callgrind-out-file=/tmp/cg.%p" in prefix
