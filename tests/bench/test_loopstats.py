"""``python -m bench --loop-stats``: the sitecustomize writes its summary for ``switchboard run`` only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.scenarios import LOOP_STATS

SCRIPT = """
import asyncio

from worker.store import sqlite

async def main():
    for _ in range(50):
        await asyncio.sleep(0)
    conn = sqlite.connect(":memory:")
    for _ in range(3):  # three batches of two writes
        await asyncio.gather(*(conn.write(lambda cursor: cursor.execute("SELECT 1")) for _ in range(2)))

asyncio.run(main())
"""


def _run(tmp_path: Path, *argv: str) -> Path:
    program = tmp_path / "switchboard"
    program.write_text(SCRIPT)
    output = tmp_path / "stats.md"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(LOOP_STATS), str(Path(__file__).parents[2])]),
        "SWITCHBOARD_BENCH_LOOP_STATS": str(output),
    }
    subprocess.run([sys.executable, str(program), *argv], env=env, check=True, timeout=60)
    return output


def test_a_worker_run_writes_its_loop_statistics(tmp_path: Path) -> None:
    output = _run(tmp_path, "run")
    summary = output.read_text()
    assert summary.startswith("# Loop statistics of `switchboard run`")
    turns = next(line for line in summary.splitlines() if line.startswith("- turns:"))
    assert int(turns.split()[2].rstrip(";").replace(",", "")) >= 50  # each sleep(0) is a turn
    assert "- hold (delivery to its ack leaving): none" in summary  # no deliveries here
    batches = next(line for line in summary.splitlines() if line.startswith("- SQLite write batches:"))
    assert batches.startswith("- SQLite write batches: 3, writes p50 2, CPU ")
    assert " s (the loop held meanwhile); wall n 3, " in batches


def test_other_commands_are_left_alone(tmp_path: Path) -> None:
    assert not _run(tmp_path, "run", "--help").exists()
    assert not _run(tmp_path, "config", "show").exists()
