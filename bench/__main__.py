"""``python -m bench [--quick] [--out bench/results/latest.json]``: run the scenarios, print the table.

Progress goes to stderr while it runs; the table (Markdown) to stdout; the
results to ``bench/results/<timestamp>.json`` and to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import amqp, procs, report, scenarios
from bench.measure import say
from bench.scenarios import Row, RunConfig

RESULTS = Path(__file__).resolve().parent / "results"
GROUPS = ("harness", "baseline", "worker", "backlog", "replays")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~2,000 commands a scenario, a 10,000 backlog")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="also write the JSON here")
    parser.add_argument(
        "--store",
        default="sqlite",
        help="idempotency stores to run the worker with: sqlite,redis,postgres or URLs; add +tracing (sqlite+tracing) to run with traces exported over OTLP",
    )
    parser.add_argument("--only", default=",".join(GROUPS), help=f"scenario groups, of {','.join(GROUPS)}")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("SWITCHBOARD_BENCH_AMQP_URL", amqp.DEFAULT_URL),
        help=f"the broker (default: vhost {amqp.BENCH_VHOST}, created with rabbitmqctl if missing)",
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/15", help="the store for --store redis"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SWITCHBOARD_BENCH_POSTGRES_URL", scenarios.POSTGRES_URL),
        help="the database --store postgres drops and creates afresh for each worker",
    )
    parser.add_argument(
        "--commands", type=int, help="commands a throughput scenario (default 20,000; quick 2,000)"
    )
    parser.add_argument(
        "--backlog", type=int, help="commands queued before the worker starts (100,000; quick 10,000)"
    )
    parser.add_argument(
        "--replays", type=int, help="completed commands published again (20,000; quick 2,000)"
    )
    parser.add_argument(
        "--latencies", default="0,50", help="vendor latencies in ms for the throughput scenarios"
    )
    parser.add_argument(
        "--repeat", type=int, help="rounds of the throughput runs, medians reported (3; quick 1)"
    )
    parser.add_argument(
        "--paced-rate", type=float, default=500.0, help="commands/s of the latency runs; 0: none"
    )
    parser.add_argument("--paced", type=int, help="commands a latency run (default 5,000; quick 2,000)")
    parser.add_argument(
        "--backlog-latency", type=float, default=0.0, help="vendor latency (ms) while draining the backlog"
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=256, help="the worker's limit, and the baseline's prefetch"
    )
    parser.add_argument(
        "--sim-impl", choices=["raw", "aiohttp"], default="raw", help="the simulator's HTTP server"
    )
    parser.add_argument(
        "--no-confirms-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the baseline without publisher confirms (reported, not the ceiling)",
    )
    parser.add_argument(
        "--keepalive-baseline",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run the baseline with the worker's keep-alive HTTP client (worker/keepalive.py) in place"
        " of aiohttp: the ratio without the worker's lighter HTTP (reported, not the issue's baseline)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample the worker with py-spy; summaries in bench/results/"
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="run the worker under valgrind's callgrind, counting from ready to the last event: its"
        " instructions a command, steady where the machine's CPU time is not (slow: use --commands 1000)",
    )
    parser.add_argument(
        "--loop-stats",
        action="store_true",
        help="time each worker's loop turns, holds and SQLite batches (bench/loopstats); summaries in bench/results/",
    )
    parser.add_argument(
        "--calibrate",
        default="",
        metavar="US,...",
        help="also run baselines spending this many more microseconds of CPU a command (100,200): what a"
        " consumer's CPU per command costs the ceiling, next to the worker's",
    )
    parser.add_argument(
        "--worker-log-level",
        default="INFO",
        help="SWITCHBOARD_LOG_LEVEL of the worker (its default: one line per command, as in production)",
    )
    parser.add_argument(
        "--force", action="store_true", help="purge switchboard.pidj even if something consumes it"
    )
    return parser


def _config(args: argparse.Namespace, workdir: Path, stamp: str) -> RunConfig:
    quick = args.quick
    refused = SystemExit(f"--calibrate takes microseconds above 0 (100,200), not {args.calibrate!r}")
    try:
        calibrate = tuple(float(value) for value in args.calibrate.split(",") if value.strip())
    except ValueError:
        raise refused from None
    if any(not burn > 0 for burn in calibrate):  # also NaN
        raise refused
    return RunConfig(
        amqp_url=args.amqp_url,
        stores=tuple(store.strip() for store in args.store.split(",") if store.strip()),
        commands=args.commands or (2_000 if quick else 20_000),
        backlog=args.backlog or (10_000 if quick else 100_000),
        replays=args.replays or (2_000 if quick else 20_000),
        max_in_flight=args.max_in_flight,
        latencies_ms=tuple(float(value) for value in args.latencies.split(",") if value.strip()),
        paced_rate=args.paced_rate,
        repeat=args.repeat or (1 if quick else 3),
        worker_log_level=args.worker_log_level,
        paced_commands=args.paced or (2_000 if quick else 5_000),
        backlog_latency_ms=args.backlog_latency,
        sim_impl=args.sim_impl,
        workdir=workdir,
        results_dir=RESULTS,
        stamp=stamp,
        profile=args.profile,
        callgrind=args.callgrind,
        keepalive_baseline=args.keepalive_baseline,
        loop_stats=args.loop_stats,
        calibrate_us=calibrate,
        redis_url=args.redis_url,
        postgres_url=args.postgres_url,
    )


def _git_commit() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def _prepare(config: RunConfig, groups: set[str], force: bool) -> bool:
    """Topology in place and nobody else consuming; whether the worker can be run."""
    if problem := amqp.ensure_vhost(config.amqp_url):
        raise SystemExit(
            f"{problem}; pass --amqp-url (or SWITCHBOARD_BENCH_AMQP_URL) for a broker you can use"
        )
    how = amqp.ensure_worker_topology(config.amqp_url, procs.VENV_BIN / "switchboard")
    say(f"topology: {how}")
    worker_groups = groups & {"worker", "backlog", "replays"}
    if not worker_groups:
        return False
    state = amqp.queue_state(config.amqp_url, amqp.WORKER_QUEUE)
    if state and state[1] and not force:
        raise SystemExit(
            f"{amqp.WORKER_QUEUE} has {state[1]} consumer(s): another worker would take the bench's "
            "commands. Stop it, or pass --force, or --amqp-url with a vhost of its own."
        )
    if not procs.worker_available():
        say("`switchboard run` is not available yet: skipping the worker scenarios")
        return False
    return True


class _Rows(list[Row]):
    """Rows in the order they ran; a scenario that cannot start is reported and skipped."""

    def attempt(self, what: str, step: Callable[[], list[Row]]) -> None:
        say(f"--- {what}")
        try:
            self.extend(step())
        except procs.StartError as exc:
            say(f"{what} failed to start:\n{exc}")


def _throughput(config: RunConfig, groups: set[str], worker_ok: bool, no_confirms: bool, rows: _Rows) -> None:
    """Baseline and worker in turn, ``repeat`` rounds (latency runs in the first only); medians kept."""
    systems: list[tuple[str, Callable[..., list[Row]]]] = []
    if "baseline" in groups:
        systems.append(("baseline", functools.partial(scenarios.baseline, confirms=True)))
        if no_confirms:
            systems.append(("baseline, no confirms", functools.partial(scenarios.baseline, confirms=False)))
        if config.keepalive_baseline:
            systems.append(
                (
                    "baseline, keepalive HTTP",
                    functools.partial(scenarios.baseline, confirms=True, http="keepalive"),
                )
            )
        systems += [
            (
                scenarios.calibrated_name(burn),
                functools.partial(scenarios.baseline, confirms=True, burn_us=burn),
            )
            for burn in config.calibrate_us
        ]
    if worker_ok and "worker" in groups:
        systems += [
            (f"worker [{store}]", functools.partial(scenarios.worker, store=store)) for store in config.stores
        ]
    for latency in config.latencies_ms if systems else ():
        with scenarios.simulator(config, latency) as sim:
            for round_ in range(config.repeat):
                for name, step in systems:
                    what = f"{name} {latency:g} ms" + (
                        f", round {round_ + 1}/{config.repeat}" if config.repeat > 1 else ""
                    )
                    rows.attempt(what, functools.partial(step, config, sim, paced=round_ == 0))


def _scenarios(config: RunConfig, groups: set[str], worker_ok: bool, no_confirms: bool) -> list[Row]:
    rows = _Rows()
    if "harness" in groups:
        rows.attempt(
            "harness ceiling (publisher + collector, no consumer)", lambda: scenarios.calibration(config)
        )
    _throughput(config, groups, worker_ok, no_confirms, rows)
    rows[:] = report.medians(rows)
    if worker_ok and groups & {"backlog", "replays"}:
        with scenarios.simulator(config, config.backlog_latency_ms) as sim:
            for store in config.stores:
                if "backlog" in groups:
                    rows.attempt(
                        f"backlog [{store}]", functools.partial(scenarios.backlog, config, sim, store)
                    )
                if "replays" in groups:
                    rows.attempt(
                        f"replays [{store}]", functools.partial(scenarios.replays, config, sim, store)
                    )
    return list(rows)


def _document(
    args: argparse.Namespace, config: RunConfig, rows: list[Row], started: str, argv: list[str]
) -> dict[str, Any]:
    return {
        "started_at": started,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(argv),
        "commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {"quick": args.quick} | _settings(config),
        "definitions": {
            "rate": "events/s between the 10th and 90th percentile of event receipt times (steady state)",
            "rate_end_to_end": "events / (first publish -> last event); backlog: first event -> last event",
            "latency": "meta.sent_at (set at publish) -> event received; under a flood it includes queueing, "
            "the 'latency @N/s' rows publish at a fixed rate below the ceiling",
            "cpu_seconds_per_1k": "utime+stime of the process under test over the run, per 1,000 events",
            "machine_cpu_seconds_per_1k": "busy time of every core (/proc/stat) over the run, per 1,000"
            " events: the process under test, the broker, the simulator, the store server, the harness",
            "broker_cpu_seconds_per_1k": "utime+stime of beam.smp over the run, per 1,000 events",
            "database_cpu_seconds_per_1k": "utime+stime of every postgres process over the run, per 1,000 events",
            "peak_rss_mb": "VmHWM of the process under test (started afresh for each scenario)",
            "ratio": "worker rate / confirmed baseline rate at the same vendor latency",
        },
        "rows": [
            row.as_json() | {"ratio_to_baseline": _nan_none(report.ratio_of(row, rows))} for row in rows
        ],
        "targets": report.targets(rows),
    }


def _settings(config: RunConfig) -> dict[str, Any]:
    """The run's settings, without paths or URLs (which may hold credentials)."""
    hidden = {
        "workdir", "results_dir", "stamp", "amqp_url", "redis_url", "postgres_url", "account_key", "token",
    }  # fmt: skip
    return {key: value for key, value in dataclasses.asdict(config).items() if key not in hidden}


def _nan_none(value: float) -> float | None:
    return None if value != value else value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    groups = {group.strip() for group in args.only.split(",") if group.strip()}
    if unknown := groups - set(GROUPS):
        raise SystemExit(f"unknown scenario groups: {', '.join(sorted(unknown))}")
    if args.callgrind and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit(
            "--callgrind needs valgrind and callgrind_control on PATH (Debian: apt install valgrind)"
        )
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        config = _config(args, Path(tmp), stamp)
        worker_ok = _prepare(config, groups, args.force)
        rows = _scenarios(config, groups, worker_ok, args.no_confirms_baseline)
    document = _document(args, config, rows, now.isoformat(timespec="seconds"), argv)
    encoded = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    (RESULTS / f"{stamp}.json").write_bytes(encoded)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(encoded)
    print(report.table(rows))
    for line in [*report.notes(rows), *report.target_lines(document["targets"])]:
        print(f"- {line}")
    say(f"results: {RESULTS / f'{stamp}.json'} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
