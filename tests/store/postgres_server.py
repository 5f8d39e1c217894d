"""Stopping and starting the machine's PostgreSQL for the restart drills (Debian's pg_ctlcluster)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def _cluster() -> list[str]:
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir() if p.is_dir())
    return [versions[-1], "main"]


def pg_ctl(action: str) -> None:
    """``pg_ctlcluster <version> main <action>`` (stop / start / restart), waiting for it to finish."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *_cluster(), action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def wait_until_accepting(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError("PostgreSQL did not come back")
        time.sleep(0.1)


def ensure_running() -> None:
    """Start the server if a drill left it stopped (never leave the machine without it)."""
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode != 0:
        pg_ctl("start")
    wait_until_accepting()
