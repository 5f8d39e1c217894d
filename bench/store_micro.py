"""The store's own CPU per command, without the dispatcher (issue 16).

Each round, ``--batch`` commands run at once, each as the worker's would: a claim, an
opt-out lookup, then the outcome stored; the claims, the lookups and the completes of one
round share their loop turns, as the worker's do. CPU time (``time.process_time``: the
database server's work is not counted) per command, the least of the rounds' averages;
for PostgreSQL also its server's CPU per command over all rounds (every ``postgres``
process on this machine, from /proc)::

    .venv/bin/python -m bench.store_micro --store sqlite --rounds 200
    .venv/bin/python -m bench.store_micro --store postgresql://postgres@127.0.0.1:5432/h_store_bench
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=/tmp/cg.out .venv/bin/python -m bench.store_micro --rounds 8
    grep summary /tmp/cg.out   # instructions / (rounds x batch) = per command

``--replays`` makes that share of each round's commands replays of finished ones (claims
answered DONE, nothing completed). A PostgreSQL database is created if missing and its
tables emptied first; a SQLite store is a WAL file in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
import time
from urllib.parse import urlparse

from bench import procstat
from worker.store import ClaimStatus, Stores, open_stores


async def _ensure_postgres(url: str) -> None:
    import asyncpg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = await asyncpg.connect(parsed._replace(path="/postgres").geturl())
    try:
        if not await admin.fetchval("SELECT true FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "DO $$ BEGIN IF to_regclass('switchboard_commands') IS NOT NULL THEN"
            " TRUNCATE switchboard_commands, switchboard_suppressions; END IF; END $$"
        )
    finally:
        await conn.close()


async def _command(stores: Stores, n: int, now: float, replay: bool) -> None:
    claim = await stores.idempotency.claim("acct", f"cmd-{n}", "fp", now, 60.0)
    if replay:
        assert claim.status is ClaimStatus.DONE, claim
        return
    assert claim.status is ClaimStatus.ACQUIRED, claim
    assert not await stores.suppressions.contains("acct", f"+1888555{n % 10000:04d}")
    await stores.idempotency.complete("acct", f"cmd-{n}", "fp", b'{"status":"succeeded"}', now)


class _Rounds:
    def __init__(self, stores: Stores, batch: int, replays: float) -> None:
        self.stores = stores
        self.batch = batch
        self.replayed = int(batch * replays)
        self.done = 0

    async def run(self, rounds: int) -> list[float]:
        """CPU us per command of each round."""
        runs: list[float] = []
        for _ in range(rounds):
            now = time.time()
            replayed = self.replayed if self.done >= self.replayed else 0
            numbers = [(self.done - replayed + i, True) for i in range(replayed)]
            numbers += [(self.done + i, False) for i in range(self.batch - replayed)]
            cpu = time.process_time()
            await asyncio.gather(*(_command(self.stores, n, now, replay) for n, replay in numbers))
            runs.append((time.process_time() - cpu) / self.batch * 1e6)
            self.done += self.batch - replayed
        return runs


def _main(url: str, rounds: int, batch: int, warmup: int, replays: float) -> tuple[list[float], float]:
    """CPU us per command of each round, and the PostgreSQL server's per command over them all."""
    loop = asyncio.new_event_loop()
    if urlparse(url).scheme.startswith("postgres"):
        loop.run_until_complete(_ensure_postgres(url))
    stores = loop.run_until_complete(open_stores(url, retention_seconds=3600))
    loop.run_until_complete(
        stores.suppressions.add("acct", "+19995550000", reason="STOP", source="bench", now=1.0)
    )
    bench = _Rounds(stores, batch, replays)
    try:
        loop.run_until_complete(bench.run(warmup))
        server_before = procstat.cpu_by_name(_SERVER)["postgres"]
        # Only what runs inside functools.reduce is counted by valgrind --tool=callgrind
        # --collect-atstart=no --toggle-collect=functools_reduce: no start-up, no warm-up.
        runs: list[float] = functools.reduce(
            lambda _, __: loop.run_until_complete(bench.run(rounds)), [[], []]
        )
        server = (procstat.cpu_by_name(_SERVER)["postgres"] - server_before) / (rounds * batch) * 1e6
    finally:
        loop.run_until_complete(stores.close())
        loop.close()
    return runs, server


_SERVER = frozenset({"postgres"})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="sqlite", help="sqlite, or a postgresql:// URL")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256, help="commands per round, in flight at once")
    parser.add_argument(
        "--replays", type=float, default=0.0, help="share of each round's commands that are replays"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.sqlite3" if args.store == "sqlite" else args.store
        runs, server = _main(url, args.rounds, args.batch, args.warmup, args.replays)
    runs.sort()
    served = f"; the server {server:.1f} us per command" if url.startswith("postgres") else ""
    print(
        f"{args.store.split('@')[-1]}: {args.batch} commands x {args.rounds} rounds:"
        f" {runs[0]:.1f} us CPU per command at best, median {runs[len(runs) // 2]:.1f}{served}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
