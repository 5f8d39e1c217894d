"""CPU per command of the Pidj ``send_text`` path, from the check to the vendor's answer (issue 16).

Runs the command's ``check`` (what the worker's payload gate runs after the
schema) and its real handler against the real Pidj simulator, 256 commands in
flight at a time, and reports CPU microseconds per command of this process.
The simulator runs in a child process, so neither ``time.process_time`` nor
callgrind counts its work. ``--bare`` runs what the bench's baseline does for
the same command instead (urlencode the payload, POST it with aiohttp, read the
answer): the difference is what the handler path adds.

The machine is shared, so the steady number is the instruction count::

    .venv/bin/python -m bench.handler_micro --commands 20000
    .venv/bin/python -m bench.handler_micro --commands 20000 --bare
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=/tmp/cg.out .venv/bin/python -m bench.handler_micro \
        --commands 2000 --warmup 500 --repeat 1
    callgrind_annotate /tmp/cg.out | head   # instructions / 2000 = per command
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import structlog

from handlers import build_registry
from handlers.pidj.client import PidjClient
from handlers.pidj.settings import PidjAccount
from worker import collector
from worker import logging as worker_logging
from worker.registry import CommandContext
from worker.validation import Validators
from worker.vendor_http import VendorHTTP

_SIMULATOR = """
import asyncio, sys
from handlers.pidj.sandbox import PidjSimulator

async def main():
    sim = PidjSimulator(seed=1)
    await sim.start()
    print(sim.api_url, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await sim.stop()

asyncio.run(main())
"""


class _NobodyOptedOut:
    async def contains(self, account: str, number: str) -> bool:
        return False


TEXT = "bench"
"""What ``text_body`` starts with (as bench.amqp publishes them); ``--text`` sets it."""


def _payload(n: int) -> dict[str, Any]:
    return {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": f"{TEXT} {n}"}


def _handler_path(
    api_url: str, session: aiohttp.ClientSession, schema: bool
) -> Callable[[int], Awaitable[Any]]:
    from handlers.pidj.sandbox import SANDBOX_ACCOUNT_KEY, SANDBOX_TOKEN

    spec = build_registry().commands["send_text"]
    validators = Validators(["send_text"], {"send_text": spec.schema})
    account = PidjAccount.model_validate(
        {"base_url": api_url, "account_key": SANDBOX_ACCOUNT_KEY, "token": SANDBOX_TOKEN}
    )
    client = PidjClient(account, VendorHTTP("pidj", session, account.base_url, timeout=15.0))
    log = structlog.get_logger("bench")
    suppressions = _NobodyOptedOut()
    started = datetime.datetime.now(datetime.UTC)
    check = spec.check
    assert check is not None

    async def one(n: int) -> Any:
        payload = _payload(n)
        if schema:
            validators.payloads["send_text"].validate(payload)
        ctx: CommandContext[PidjClient] = CommandContext(
            command_id=f"cmd-{n}",
            type="send_text",
            account="default",
            attempt=1,
            meta={},
            client=client,
            log=log,
            first_attempt_at=started,
            suppressions=suppressions,  # type: ignore[arg-type]
        )
        result = await spec.handler(check(payload), ctx)
        assert isinstance(result, dict) and result["status"] == "success", result
        return result

    return one


def _bare_path(api_url: str, session: aiohttp.ClientSession) -> Callable[[int], Awaitable[Any]]:
    import base64

    from handlers.pidj.sandbox import SANDBOX_ACCOUNT_KEY, SANDBOX_TOKEN

    credentials = base64.b64encode(f"{SANDBOX_ACCOUNT_KEY}:{SANDBOX_TOKEN}".encode()).decode()
    headers = {"Authorization": "Basic " + credentials, "Content-Type": "application/x-www-form-urlencoded"}
    url = api_url + "/send"

    async def one(n: int) -> Any:
        async with session.post(
            url, data=urlencode(_payload(n)).encode("ascii"), headers=headers
        ) as response:
            await response.read()
            assert response.status == 200
        return None

    return one


def _measure(
    loop: asyncio.AbstractEventLoop, one: Callable[[int], Awaitable[Any]], start: int, count: int, batch: int
) -> int:
    loop.run_until_complete(_rounds(one, start, count, batch))
    return 0


async def _rounds(one: Callable[[int], Awaitable[Any]], start: int, count: int, batch: int) -> None:
    for i in range(start, start + count, batch):
        await asyncio.gather(*(one(n) for n in range(i, min(i + batch, start + count))))


def main(args: argparse.Namespace) -> None:
    simulator = subprocess.Popen(
        [sys.executable, "-c", _SIMULATOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert simulator.stdout is not None
        api_url = simulator.stdout.readline().strip()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def open_session() -> aiohttp.ClientSession:
            # As worker.runtime opens it.
            connector = aiohttp.TCPConnector(limit=max(100, args.batch * 2), ttl_dns_cache=300)
            return aiohttp.ClientSession(connector=connector)

        session = loop.run_until_complete(open_session())
        one = _bare_path(api_url, session) if args.bare else _handler_path(api_url, session, args.schema)
        loop.run_until_complete(_rounds(one, 0, args.warmup, args.batch))
        done = args.warmup
        runs = []
        for _ in range(args.repeat):
            cpu = time.process_time()
            # Only what runs inside functools.reduce is counted by valgrind --tool=callgrind
            # --collect-atstart=no --toggle-collect=functools_reduce.
            start = done
            functools.reduce(lambda _, __: _measure(loop, one, start, args.commands, args.batch), [0, 0])
            runs.append((time.process_time() - cpu) / args.commands * 1e6)
            done += args.commands
        loop.run_until_complete(session.close())
        loop.close()
    finally:
        assert simulator.stdin is not None
        simulator.stdin.close()
        simulator.wait(10)
    shown = ", ".join(f"{us:.1f}" for us in runs)
    what = "bare POST" if args.bare else "send_text" + (" + schema" if args.schema else "")
    print(
        f"{what}: {args.commands} commands x {args.repeat}: {min(runs):.1f} us CPU each at best ({shown})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="commands in flight at once")
    parser.add_argument("--bare", action="store_true", help="the baseline's urlencode + POST instead")
    parser.add_argument("--schema", action="store_true", help="validate each payload with its schema first")
    parser.add_argument("--text", default=TEXT, help="text_body (the command's number is appended)")
    parsed = parser.parse_args()
    TEXT = parsed.text
    # The log lines go nowhere, rendered as in production (the report is on stderr).
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    worker_logging.configure("INFO", "json")
    # The collector as `switchboard run` sets it (worker/collector.py): with Python's default
    # young generation, collections would be counted here that the worker does not make.
    collector.tune(collector.DEFAULT_YOUNG_THRESHOLD)
    main(parsed)
