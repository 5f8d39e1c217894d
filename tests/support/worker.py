"""A real ``switchboard run`` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from tests.support.amqp import AMQP_URL

REPO = Path(__file__).resolve().parents[2]
SWITCHBOARD = REPO / ".venv" / "bin" / "switchboard"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class WorkerProcess:
    """``with WorkerProcess({...env...}) as worker:`` starts a worker and waits until /readyz is 200."""

    def __init__(
        self, env: dict[str, str] | None = None, *, ready_timeout: float = 30.0, wait_ready: bool = True
    ) -> None:
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="switchboard-test-")
        base = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        base.update(
            {
                "SWITCHBOARD_AMQP_URL": AMQP_URL,
                "SWITCHBOARD_METRICS_PORT": str(self.port),
                "SWITCHBOARD_METRICS_HOST": "127.0.0.1",
                "SWITCHBOARD_STORE_URL": f"sqlite:///{self._tmp.name}/store.sqlite3",
                "SWITCHBOARD_LOG_FORMAT": "json",
                "SWITCHBOARD_RETRY_BASE_SECONDS": "0.2",
            }
        )
        base.update(env or {})
        self.env = base
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(self._tmp.name) / "worker.log"
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(SWITCHBOARD), "run"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        if self.wait_ready:
            self.wait_until_ready()
        return self

    def wait_until_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.logs()}")
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not ready within the timeout:\n{self.logs()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample in /metrics (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            sample, _, label_text = key.partition("{")
            found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if sample == name and found == want:
                return float(value)
        return 0.0

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
        if exc[0] is not None:
            sys.stderr.write(f"--- worker log ---\n{self.logs()[-20000:]}\n")
        self._tmp.cleanup()
