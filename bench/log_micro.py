"""CPU per log line: the worker's "command finished" line, as a busy worker writes it (issue 16).

Logging configured as ``switchboard run`` configures it (JSON at INFO), the command's
context bound as the dispatcher binds it, the lines written to a file from inside an
event loop, ``--per-turn`` lines a loop turn (a busy worker finishes many commands a
turn). CPU microseconds per line of this process, the least of the rounds::

    .venv/bin/python -m bench.log_micro
    .venv/bin/python -m bench.log_micro --out /dev/null
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time

import structlog

from worker import logging as worker_logging


async def _lines(log: structlog.typing.FilteringBoundLogger, count: int, per_turn: int) -> None:
    for n in range(count):
        log.info("command finished", status="succeeded", code=None, attempts=1, duration_ms=123.456)
        if n % per_turn == per_turn - 1:
            await asyncio.sleep(0)
    await asyncio.sleep(0)  # the last turn's lines written too


def main(args: argparse.Namespace) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".log") as scratch:
        sys.stdout = open(args.out or scratch.name, "w")  # noqa: SIM115 - closed below
        try:
            worker_logging.configure("INFO", "json")
            log = structlog.get_logger("switchboard.dispatcher")
            worker_logging.clear_context()
            worker_logging.bind_context(
                command_id="cmd-123456", type="send_text", attempt=1, vendor="pidj", account="default"
            )
            runs = []
            for _ in range(args.repeat):
                cpu = time.process_time()
                asyncio.run(_lines(log, args.lines, args.per_turn))
                runs.append((time.process_time() - cpu) / args.lines * 1e6)
        finally:
            sys.stdout.close()
            sys.stdout = sys.__stdout__
    shown = ", ".join(f"{us:.2f}" for us in runs)
    print(
        f"{args.lines} lines x {args.repeat}: {min(runs):.2f} us CPU a line at best ({shown})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--per-turn", type=int, default=64, help="lines logged in one loop turn")
    parser.add_argument("--out", default=None, help="where the lines go (default: a temporary file)")
    main(parser.parse_args())
