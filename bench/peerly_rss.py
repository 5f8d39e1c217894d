"""Peak RSS of a worker uploading many large files at once (issue 14 item 1).

``python -m bench.peerly_rss`` starts a worker (``switchboard run``, its own
vhost and store), a Peerly stand-in (:mod:`bench.peerly_sink`), writes
``--files`` sparse files of ``--size-mib`` MiB into the account's
``upload_dir``, publishes one ``create_media`` per file at once and waits for
every terminal event. It prints one JSON line: the worker's RSS when ready,
its peak (``VmHWM``), how long it took, the statuses and the file budget used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pika

from bench import procs, procstat
from bench.amqp import ensure_vhost

MIB = 1024 * 1024
TERMINAL = {"succeeded", "failed", "rejected"}


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=False)


def _write_files(directory: Path, count: int, size: int) -> list[str]:
    names = []
    for index in range(count):
        name = f"clip{index:02d}.mp4"
        with (directory / name).open("wb") as handle:
            handle.truncate(size)  # sparse: the disk is not the point
        names.append(name)
    return names


def _publish_and_wait(
    url: str, names: list[str], worker_pid: int, timeout: float
) -> tuple[dict[str, int], float]:
    """Publish one create_media per file; (status counts, seconds) once all ended."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "switchboard.events", "#")
        channel.confirm_delivery()
        ids = set()
        started = time.monotonic()
        for name in names:
            command_id = str(uuid.uuid4())
            ids.add(command_id)
            body = {
                "id": command_id,
                "type": "create_media",
                "payload": {"title": name, "file": {"path": name}},
            }
            channel.basic_publish(
                "switchboard.commands",
                "create_media",
                orjson.dumps(body),
                pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=command_id),
            )
        statuses: dict[str, int] = {}
        deadline = started + timeout
        while ids and time.monotonic() < deadline:
            method, _, raw = channel.basic_get(queue, auto_ack=True)
            if method is None:
                connection.sleep(0.05)
                continue
            event: dict[str, Any] = orjson.loads(raw)
            if event.get("command_id") in ids and event.get("status") in TERMINAL:
                ids.discard(event["command_id"])
                statuses[event["status"]] = statuses.get(event["status"], 0) + 1
        if ids:
            statuses["no_event"] = len(ids)
        return statuses, time.monotonic() - started
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--budget-bytes", type=int, default=None, help="SWITCHBOARD_FILE_MEMORY_BUDGET_BYTES")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    vhost = f"switchboard-bench-peerly-{os.getpid()}"
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    problem = ensure_vhost(url)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="switchboard-rss-") as tmp:
        root = Path(tmp)
        (root / "files").mkdir()
        names = _write_files(root / "files", args.files, args.size_mib * MIB)
        sink = procs.spawn("peerly-sink", [sys.executable, "-m", "bench.peerly_sink"], root)
        worker = None
        try:
            port = int(procs.wait_for_line(sink, "READY").split()[1])
            metrics_port = procs.free_port()
            env = {
                "SWITCHBOARD_AMQP_URL": url,
                "SWITCHBOARD_VENDORS": "peerly",
                "SWITCHBOARD_METRICS_HOST": "127.0.0.1",
                "SWITCHBOARD_METRICS_PORT": str(metrics_port),
                "SWITCHBOARD_STORE_URL": f"sqlite:///{root}/store.sqlite3",
                "SWITCHBOARD_LOG_FORMAT": "json",
                "SWITCHBOARD_PEERLY_BASE_URL": f"http://127.0.0.1:{port}/api",
                "SWITCHBOARD_PEERLY_EMAIL": "bench@switchboard.invalid",
                "SWITCHBOARD_PEERLY_PASSWORD": "bench-password",
                "SWITCHBOARD_PEERLY_ACCOUNT_ID": "12345678",
                "SWITCHBOARD_PEERLY_UPLOAD_DIR": str(root / "files"),
            }
            if args.budget_bytes is not None:
                env["SWITCHBOARD_FILE_MEMORY_BUDGET_BYTES"] = str(args.budget_bytes)
            subprocess.run(
                [str(procs.VENV_BIN / "switchboard"), "topology", "declare"],
                env={**os.environ, **env},
                check=True,
                capture_output=True,
                timeout=60,
            )
            worker = procs.start_worker(env, metrics_port, root, "worker")
            ready_rss = procstat.status_kib(worker.pid, "VmRSS")["VmRSS"]
            statuses, seconds = _publish_and_wait(url, names, worker.pid, args.timeout)
            memory = procstat.status_kib(worker.pid, "VmHWM", "VmRSS")
            print(
                orjson.dumps(
                    {
                        "files": args.files,
                        "file_mib": args.size_mib,
                        "budget_bytes": args.budget_bytes,
                        "rss_when_ready_mib": round(ready_rss / 1024, 1),
                        "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
                        "rss_after_mib": round(memory["VmRSS"] / 1024, 1),
                        "seconds": round(seconds, 1),
                        "statuses": statuses,
                    }
                ).decode(),
                flush=True,
            )
            return 0 if statuses.get("succeeded") == args.files else 1
        finally:
            if worker is not None:
                worker.stop()
            sink.stop(grace=5)
            _rabbitmqctl("delete_vhost", vhost)


if __name__ == "__main__":
    sys.exit(main())
