"""worker.collector: the garbage collector's settings, in a child process (they are process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import gc, sys
from worker import collector
collector.tune(int(sys.argv[1]))
print(gc.get_threshold()[0], gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize(
    ("young", "expected"),
    [("50000", "50000 True"), ("1234", "1234 True"), ("0", "700 False")],
)
def test_tune_sets_the_young_threshold_and_freezes_start_up(young: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, young], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == expected


@pytest.mark.parametrize(("env", "expected"), [({}, 50_000), ({"SWITCHBOARD_GC_YOUNG_THRESHOLD": "0"}, 0)])
@pytest.mark.parametrize("command", ["run", "webhooks"])
def test_the_worker_applies_the_setting(
    monkeypatch: pytest.MonkeyPatch, command: str, env: dict[str, str], expected: int
) -> None:
    """`switchboard run` and `switchboard webhooks` tune the collector from SWITCHBOARD_GC_YOUNG_THRESHOLD."""
    from click.testing import CliRunner

    from worker import cli, collector, runtime

    tuned: list[int] = []
    monkeypatch.setattr(collector, "tune", tuned.append)

    class Stopped:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        async def run(self) -> int:
            return 0

    monkeypatch.setattr(runtime, "Runtime", Stopped)
    for name in [n for n in os.environ if n.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(name)
    result = CliRunner().invoke(cli.main, [command], env=env)
    assert result.exit_code == 0, result.output
    assert tuned == [expected]
