"""Start, wait for, and stop the processes a scenario measures: simulator, baseline, worker, py-spy.

Every wait has a deadline, and every process is stopped with SIGTERM, then
SIGKILL if it outlives its grace; their stderr goes to a log file whose tail
is shown when one fails to start.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

VENV_BIN = Path(sys.executable).parent


class StartError(RuntimeError):
    """A process did not come up; the message ends with the tail of its log."""


@dataclass
class Managed:
    """A child process and the file its stderr goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, grace: float = 15.0, signum: int = signal.SIGTERM) -> int:
        """Signal, wait up to ``grace`` seconds, then kill; the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def fail(self, why: str) -> StartError:
        self.stop(grace=5)
        return StartError(f"{self.name}: {why}\n--- last lines of {self.log} ---\n{self.tail()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    name: str,
    argv: list[str],
    logdir: Path,
    env: Mapping[str, str] | None = None,
    *,
    stdout_to_log: bool = False,
) -> Managed:
    """Start ``argv``; its stderr (and with ``stdout_to_log`` its stdout) goes to ``<logdir>/<name>.log``.

    Otherwise stdout is a pipe, read only for the child's ready line: a child that keeps
    writing there (the worker's log lines) would fill it and block.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            argv,
            stdout=sink if stdout_to_log else subprocess.PIPE,
            stderr=sink,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    return Managed(name=name, process=process, log=log)


def _read_line(stream: IO[bytes], timeout: float) -> str | None:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return None
    return stream.readline().decode(errors="replace").strip()


def wait_for_line(managed: Managed, prefix: str, timeout: float = 30.0) -> str:
    """The first stdout line starting with ``prefix`` (the child's way of saying it is ready)."""
    assert managed.process.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        line = _read_line(managed.process.stdout, left)
        if line is None:
            break
        if line.startswith(prefix):
            return line
        if line == "" and managed.process.poll() is not None:
            raise managed.fail(f"exited with {managed.process.returncode} before it was ready")
    raise managed.fail(f"not ready after {timeout:.0f} s")


def start_simulator(
    latency_ms: float, logdir: Path, *, impl: str = "raw", account_key: str, token: str, max_seconds: float
) -> tuple[Managed, int]:
    argv = [
        sys.executable, "-m", "bench.simulator", "--latency-ms", str(latency_ms), "--impl", impl,
        "--account-key", account_key, "--token", token, "--max-seconds", str(max_seconds),
    ]  # fmt: skip
    managed = spawn(f"simulator-{latency_ms:g}ms", argv, logdir)
    port = int(wait_for_line(managed, "READY").split()[1])
    return managed, port


def start_baseline(
    *, amqp_url: str, sim_url: str, confirms: bool, prefetch: int, account_key: str, token: str,
    logdir: Path, max_seconds: float, burn_us: float = 0.0, prefix: Sequence[str] = (), http: str = "aiohttp",
) -> Managed:  # fmt: skip
    """``python -m bench.baseline`` (under ``prefix``, a tool); returns once it says READY."""
    argv = [
        *prefix, sys.executable, "-m", "bench.baseline", "--amqp-url", amqp_url, "--sim-url", sim_url,
        "--prefetch", str(prefetch), "--confirms" if confirms else "--no-confirms",
        "--account-key", account_key, "--token", token, "--max-seconds", str(max_seconds),
        "--burn-us", str(burn_us), "--http", http,
    ]  # fmt: skip
    name = "baseline" + ("" if confirms else "-noconfirm") + (f"-burn{burn_us:g}us" if burn_us else "")
    name += "" if http == "aiohttp" else f"-{http}"
    managed = spawn(name, argv, logdir)
    wait_for_line(managed, "READY", timeout=300 if prefix else 30)
    return managed


def start_worker(
    env: Mapping[str, str],
    metrics_port: int,
    logdir: Path,
    name: str,
    timeout: float = 60.0,
    prefix: Sequence[str] = (),
) -> Managed:
    """``switchboard run`` with ``env`` (under ``prefix``, a tool); returns once GET /readyz answers 200."""
    # Its log lines (on stdout, one per command at INFO) go to the file, as a collector would take them.
    command = [*prefix, str(VENV_BIN / "switchboard"), "run"]
    managed = spawn(name, command, logdir, env, stdout_to_log=True)
    url = f"http://127.0.0.1:{metrics_port}/readyz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed.process.poll() is not None:
            raise managed.fail(f"exited with {managed.process.returncode} before it was ready")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=1) as answer,
        ):
            if answer.status == 200:
                return managed
        time.sleep(0.1)
    raise managed.fail(f"{url} not 200 after {timeout:.0f} s")


def callgrind_prefix(output: Path) -> list[str]:
    """valgrind's callgrind around a process, counting nothing until told (:func:`callgrind_control`)."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={output}.%p"]


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, timeout=60, check=True)


def callgrind_dump(pid: int, output: Path) -> int | None:
    """Write what callgrind counted so far; its instructions (``Ir``), all threads together."""
    before = set(output.parent.glob(f"{output.name}.{pid}*"))
    callgrind_control("--dump", pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for dump in set(output.parent.glob(f"{output.name}.{pid}*")) - before:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.5)
    return None


def worker_available() -> bool:
    """Whether ``switchboard run`` exists yet (``switchboard run --help`` succeeds)."""
    cli = VENV_BIN / "switchboard"
    if not cli.exists():
        return False
    done = subprocess.run([str(cli), "run", "--help"], capture_output=True, timeout=60, check=False)
    return done.returncode == 0


def start_py_spy(pid: int, output: Path, logdir: Path, rate: int = 100) -> Managed:
    """Sample ``pid`` with py-spy until stopped (SIGINT); writes collapsed stacks to ``output``."""
    binary = VENV_BIN / "py-spy"
    if not binary.exists():
        raise StartError("py-spy is not installed: .venv/bin/pip install py-spy")
    argv = [
        str(binary), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
        "--output", str(output), "--nonblocking",
    ]  # fmt: skip
    managed = spawn("py-spy", argv, logdir)
    time.sleep(0.5)  # py-spy attaches asynchronously; half a second covers it and costs nothing measured
    if managed.process.poll() is not None:
        raise managed.fail("py-spy exited at once")
    return managed
