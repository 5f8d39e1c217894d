"""Issue 14 item 12: every log line (ours, pika's, aiohttp's, asyncio's) is masked JSON on stdout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tests.support.worker import REPO, SWITCHBOARD, free_port

PIKA_LINES_WANTED = 3


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object; fails on the first line that is not one."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            parsed = orjson.loads(line)
            assert isinstance(parsed, dict), line
            lines.append(parsed)
    return lines


def test_a_worker_with_the_broker_down_logs_only_json_on_stdout(tmp_path: Path) -> None:
    """With the broker unreachable, pika's own lines come out as JSON on stdout, and stderr stays empty."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        {
            "SWITCHBOARD_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
            "SWITCHBOARD_STORE_URL": f"sqlite:///{tmp_path}/store.sqlite3",
            "SWITCHBOARD_SANDBOX": "true",
            "SWITCHBOARD_METRICS_HOST": "127.0.0.1",
            "SWITCHBOARD_METRICS_PORT": str(free_port()),
            "SWITCHBOARD_LOG_FORMAT": "auto",
        }
    )
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen([str(SWITCHBOARD), "run"], env=env, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if out_path.read_text().count('"logger":"pika') >= PIKA_LINES_WANTED:
                    break
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    lines = _json_lines(out_path.read_text())
    assert sum(1 for line in lines if str(line.get("logger", "")).startswith("pika")) >= PIKA_LINES_WANTED
    assert all({"event", "level", "timestamp"} <= line.keys() for line in lines)
    assert err_path.read_text() == ""


LIBRARY_LINES = """
import asyncio, logging, warnings
from worker.logging import configure
configure("INFO", "auto")
logging.getLogger("aiohttp.server").error("request from +18885553333 failed")
logging.getLogger("pika.connection").warning("peer %s closed", "+18885554444")
try:
    raise ValueError("number +18885555555 rejected")
except ValueError:
    logging.getLogger("asyncio").exception("Task exception was never retrieved")
warnings.warn("a deprecated call", DeprecationWarning, stacklevel=1)
warnings.simplefilter("always")
warnings.warn("shown", UserWarning, stacklevel=1)
"""


def test_library_lines_go_through_the_same_masking_processors() -> None:
    """aiohttp, pika and asyncio lines (tracebacks too) are JSON with phone numbers masked."""
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_LINES], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = _json_lines(done.stdout)
    loggers = {line.get("logger") for line in lines}
    assert {"aiohttp.server", "pika.connection", "asyncio", "py.warnings"} <= loggers
    for number in ("+18885553333", "+18885554444", "+18885555555"):
        assert number not in done.stdout
    assert "+1*******33" in done.stdout
    traceback_line = next(line for line in lines if line.get("logger") == "asyncio")
    assert "ValueError" in traceback_line["exception"]


UNCAUGHT_LINES = """
import gc, threading
from worker.logging import configure
configure("INFO", "auto")
def die():
    raise RuntimeError("thread saw +18885556666")
thread = threading.Thread(target=die, name="sandbox")
thread.start()
thread.join()
class Finaliser:
    def __del__(self):
        raise ValueError("finaliser saw +18885557777")
Finaliser()
gc.collect()
"""


def test_uncaught_exceptions_in_threads_and_finalisers_are_masked_json() -> None:
    """A thread's or a __del__'s uncaught exception is a masked JSON line on stdout, not plain text on stderr."""
    done = subprocess.run(
        [sys.executable, "-c", UNCAUGHT_LINES], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = _json_lines(done.stdout)
    exceptions = " ".join(str(line.get("exception", "")) for line in lines)
    assert "RuntimeError" in exceptions and "ValueError" in exceptions
    assert any("thread sandbox" in line["event"] for line in lines)
    for number in ("+18885556666", "+18885557777"):
        assert number not in done.stdout
