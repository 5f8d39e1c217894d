"""The scenarios of the issue; each returns one table row.

Every scenario starts the process it measures afresh (so its VmHWM is its own
peak), purges the queue it consumes, and uses a fresh id prefix, so stray
events of an earlier run are never counted.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import amqp, procs
from bench.measure import Measured, Plan, run, say
from bench.otlp_sink import OtlpSink
from bench.profile import summarize

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/switchboard_bench"
LOOP_STATS = Path(__file__).parent / "loopstats"
"""Holds the ``sitecustomize`` that ``--loop-stats`` puts on the worker's ``PYTHONPATH``."""


@dataclass(frozen=True)
class RunConfig:
    amqp_url: str
    stores: tuple[str, ...]
    commands: int
    backlog: int
    replays: int
    max_in_flight: int
    latencies_ms: tuple[float, ...]
    paced_rate: float
    paced_commands: int
    repeat: int
    backlog_latency_ms: float
    sim_impl: str
    workdir: Path
    results_dir: Path
    stamp: str
    profile: bool = False
    callgrind: bool = False
    """The worker under valgrind --tool=callgrind (``--callgrind``): instructions, not seconds."""
    keepalive_baseline: bool = False
    """Also a baseline on worker/keepalive.py (``--keepalive-baseline``), reported beside the aiohttp one."""
    loop_stats: bool = False
    calibrate_us: tuple[float, ...] = ()
    """CPU per command added to extra baselines (``--calibrate``), in microseconds."""
    worker_log_level: str = "INFO"
    redis_url: str = "redis://127.0.0.1:6379/15"
    postgres_url: str = POSTGRES_URL
    account_key: str = "bench-key"
    token: str = "bench-token"

    def store_url(self, store: str, name: str) -> str:
        """``sqlite`` -> a fresh file for this worker; ``redis`` -> ``redis_url``;
        ``postgres`` -> a fresh bench database; a URL as it is."""
        if store == "sqlite":
            return f"sqlite:///{self.workdir / f'{name}.sqlite3'}"
        if store == "redis":
            return self.redis_url
        if store == "postgres":
            return fresh_postgres_database(self.postgres_url)
        return store

    def max_seconds(self, count: int) -> float:
        """A deadline no healthy run reaches: 60 s plus 5 ms a command (200/s; 100 ms under callgrind)."""
        return 60 + count / (10 if self.callgrind else 200)

    @property
    def logdir(self) -> Path:
        """Kept after the run (bench/results/ is not committed): where to look when a row has notes."""
        return self.results_dir / f"logs-{self.stamp}"


@dataclass
class Row:
    scenario: str
    system: str
    vendor_latency_ms: float
    commands: int
    rate: float  # events/s, steady state: between the 10th and 90th percentile of receipt times
    rate_end_to_end: float  # events / (first publish, or first event for a backlog -> last event)
    publish_rate: float
    p50_ms: float
    p99_ms: float
    cpu_seconds_per_1k: float
    peak_rss_mb: float
    vendor_calls: int | None
    vendor_repeats: int | None  # texts sent more than once for the same command
    statuses: dict[str, int]
    notes: list[str] = field(default_factory=list)
    machine_cpu_seconds_per_1k: float = math.nan  # every core's busy time, whatever ran on it
    broker_cpu_seconds_per_1k: float = math.nan  # beam.smp
    database_cpu_seconds_per_1k: float = math.nan  # postgres (every backend and the server)

    def as_json(self) -> dict[str, Any]:
        return {
            key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class Calls:
    """The simulator's counters; subtract two readings for a run's share."""

    sent: int
    repeated: int

    def __sub__(self, other: Calls) -> Calls:
        return Calls(self.sent - other.sent, self.repeated - other.repeated)


def _per_1k(seconds: float | None, measured: Measured) -> float:
    count = measured.collected.count
    return seconds * 1000 / count if count and seconds is not None else math.nan


def _row(scenario: str, system: str, latency_ms: float, measured: Measured, calls: Calls | None) -> Row:
    notes = list(measured.notes)
    if calls is not None and calls.repeated:
        notes.append(f"{calls.repeated} texts sent to the vendor more than once for the same command")
    return Row(
        scenario=scenario,
        system=system,
        vendor_latency_ms=latency_ms,
        commands=measured.expected,
        rate=measured.steady_rate(),
        rate_end_to_end=measured.end_to_end_rate(),
        publish_rate=measured.publish_rate(),
        p50_ms=measured.latency_ms(50),
        p99_ms=measured.latency_ms(99),
        cpu_seconds_per_1k=_per_1k(measured.cpu_seconds, measured),
        peak_rss_mb=measured.peak_rss_bytes / 2**20 if measured.peak_rss_bytes else math.nan,
        vendor_calls=None if calls is None else calls.sent,
        vendor_repeats=None if calls is None else calls.repeated,
        statuses=dict(measured.collected.statuses),
        notes=notes,
        machine_cpu_seconds_per_1k=_per_1k(measured.machine_cpu_seconds, measured),
        broker_cpu_seconds_per_1k=_per_1k(measured.neighbour_cpu_seconds.get("beam.smp"), measured),
        database_cpu_seconds_per_1k=_per_1k(measured.neighbour_cpu_seconds.get("postgres"), measured),
    )


def _prefix(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


class Simulator:
    """The simulator process for one vendor latency."""

    def __init__(self, config: RunConfig, latency_ms: float) -> None:
        self.latency_ms = latency_ms
        self.managed, self.port = procs.start_simulator(
            latency_ms, config.logdir, impl=config.sim_impl, account_key=config.account_key,
            token=config.token, max_seconds=3600,
        )  # fmt: skip

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/2020"

    def sent(self) -> Calls:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as answer:
            counters = orjson.loads(answer.read())
            return Calls(sent=int(counters["sent"]), repeated=int(counters["repeated"]))

    def stop(self) -> None:
        self.managed.stop(grace=5)


@contextlib.contextmanager
def simulator(config: RunConfig, latency_ms: float) -> Iterator[Simulator]:
    sim = Simulator(config, latency_ms)
    try:
        yield sim
    finally:
        sim.stop()


def calibration(config: RunConfig) -> list[Row]:
    """The harness alone: events published straight to switchboard.events, counted by the collector."""
    prefix = _prefix("harness")
    job = amqp.PublishJob(
        config.amqp_url,
        "send_text.succeeded",
        prefix,
        config.commands,
        exchange=amqp.EVENTS_EXCHANGE,
        events=True,
    )
    plan = Plan(
        "harness",
        config.amqp_url,
        prefix,
        config.commands,
        publish=job,
        max_seconds=config.max_seconds(config.commands),
    )
    return [_row("harness ceiling", "publisher+collector", 0, run(plan), None)]


def baseline(
    config: RunConfig,
    sim: Simulator,
    *,
    confirms: bool,
    paced: bool = True,
    burn_us: float = 0.0,
    http: str = "aiohttp",
) -> list[Row]:
    """The bare consumer on its own quorum queue: flooded with ``commands``, then paced.

    ``burn_us``: the calibration baseline (``--calibrate``), spending that much more CPU a command.
    """
    amqp.ensure_baseline_queue(config.amqp_url)
    amqp.purge(config.amqp_url, amqp.BASELINE_QUEUE)
    system = calibrated_name(burn_us) if burn_us else "baseline" if confirms else "baseline, no confirms"
    if http != "aiohttp":
        system += f", {http} HTTP"
    slug = system.replace(", ", "-").replace(" ", "-")
    counted = config.results_dir / f"callgrind-{config.stamp}-{slug}.out" if config.callgrind else None
    managed = procs.start_baseline(
        amqp_url=config.amqp_url, sim_url=sim.base_url, confirms=confirms, prefetch=config.max_in_flight,
        account_key=config.account_key, token=config.token, logdir=config.logdir, max_seconds=3600,
        burn_us=burn_us, prefix=procs.callgrind_prefix(counted) if counted else (), http=http,
    )  # fmt: skip
    if counted is not None:
        procs.callgrind_control("--instr=on", managed.pid)  # as the worker's: from ready on
    profile = config.results_dir / f"profile-{config.stamp}-{slug}.txt"
    spy = procs.start_py_spy(managed.pid, profile, config.logdir) if config.profile else None
    try:
        rows = _flood_and_paced(config, sim, system, amqp.BASELINE_KEY, managed.pid, paced)
        if counted is not None:
            instructions = procs.callgrind_dump(managed.pid, counted)
            rows[0].notes.append(f"callgrind: {counted}.*")
            if instructions is not None and rows[0].commands:
                rows[0].notes.append(
                    f"callgrind: {instructions / rows[0].commands:,.0f} instructions a command"
                )
        return rows
    finally:
        if spy is not None:
            # Profiled like the worker, so the two can be compared stage by stage.
            spy.stop(grace=30, signum=signal.SIGINT)
            if profile.exists():
                profile.with_suffix(".md").write_text(summarize(profile))
        managed.stop()


def calibrated_name(burn_us: float) -> str:
    return f"baseline +{burn_us:g} us CPU"


def _flood_and_paced(
    config: RunConfig, sim: Simulator, system: str, routing_key: str, pid: int, paced: bool
) -> list[Row]:
    """A flood of ``commands`` (throughput), then ``paced_commands`` at ``paced_rate`` (latency)."""
    label = f"{system} {sim.latency_ms:g} ms"
    calls = sim.sent()
    measured = _publish_and_wait(config, label, _prefix("flood"), config.commands, pid, routing_key)
    rows = [_row("throughput", system, sim.latency_ms, measured, sim.sent() - calls)]
    if paced and config.paced_rate > 0 and config.paced_commands > 0:
        calls = sim.sent()
        slow = _publish_and_wait(
            config,
            f"{label} paced",
            _prefix("paced"),
            config.paced_commands,
            pid,
            routing_key,
            config.paced_rate,
        )
        rows.append(
            _row(f"latency @{config.paced_rate:,.0f}/s", system, sim.latency_ms, slow, sim.sent() - calls)
        )
    return rows


def fresh_postgres_database(url: str) -> str:
    """Drop and create the bench database, so each run starts from empty tables."""
    import asyncio

    import asyncpg

    database = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"

    async def recreate() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()

    asyncio.run(recreate())
    return url


class Worker:
    """``switchboard run`` against the simulator, with this run's store; optionally under py-spy."""

    def __init__(self, config: RunConfig, sim: Simulator, store: str, name: str) -> None:
        self.config, self.name = config, name
        self.metrics_port = procs.free_port()
        # "sqlite+tracing": traces on, every command sampled; "sqlite+tracing@0.1": one in ten.
        store, _, option = store.partition("+")
        option, _, ratio = option.partition("@")
        self.sink: OtlpSink | None = OtlpSink() if option == "tracing" else None
        self.sample_ratio = ratio
        self.env = {
            "SWITCHBOARD_AMQP_URL": config.amqp_url,
            "SWITCHBOARD_METRICS_HOST": "127.0.0.1",
            "SWITCHBOARD_METRICS_PORT": str(self.metrics_port),
            "SWITCHBOARD_STORE_URL": config.store_url(store, name),
            "SWITCHBOARD_PIDJ_BASE_URL": sim.base_url,
            "SWITCHBOARD_PIDJ_ACCOUNT_KEY": config.account_key,
            "SWITCHBOARD_PIDJ_TOKEN": config.token,
            "SWITCHBOARD_VENDORS": "pidj",
            "SWITCHBOARD_LOG_LEVEL": config.worker_log_level,
            "SWITCHBOARD_LOG_FORMAT": "json",
            "SWITCHBOARD_MAX_IN_FLIGHT": str(config.max_in_flight),
            "SWITCHBOARD_SHUTDOWN_GRACE_SECONDS": "5",
        }
        self.managed: procs.Managed | None = None
        self.spy: procs.Managed | None = None
        self.instructions: int | None = None
        """Counted by callgrind from ready to the last event (``--callgrind``)."""

    def start(self) -> int:
        if self.sink is not None:
            # Tracing on: spans exported over OTLP/HTTP to a local receiver.
            self.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.sink.__enter__()
            self.env["OTEL_SERVICE_NAME"] = "switchboard-bench"
            if self.sample_ratio:
                self.env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
                self.env["OTEL_TRACES_SAMPLER_ARG"] = self.sample_ratio
        if self.config.loop_stats:
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(LOOP_STATS), os.environ.get("PYTHONPATH")])
            )
            self.env["SWITCHBOARD_BENCH_LOOP_STATS"] = str(self.loop_stats_path)
        if self.config.callgrind:
            self.managed = procs.start_worker(
                self.env, self.metrics_port, self.config.logdir, self.name, timeout=300,
                prefix=procs.callgrind_prefix(self.callgrind_path),
            )  # fmt: skip
            procs.callgrind_control("--instr=on", self.managed.pid)  # from ready on: no start-up
        else:
            self.managed = procs.start_worker(self.env, self.metrics_port, self.config.logdir, self.name)
        if self.config.profile:
            self.spy = procs.start_py_spy(self.managed.pid, self.profile_path, self.config.logdir)
        return self.managed.pid

    @property
    def profile_path(self) -> Path:
        return self.config.results_dir / f"profile-{self.config.stamp}-{self.name}.txt"

    @property
    def callgrind_path(self) -> Path:
        return self.config.results_dir / f"callgrind-{self.config.stamp}-{self.name}.out"

    @property
    def loop_stats_path(self) -> Path:
        return self.config.results_dir / f"loopstats-{self.config.stamp}-{self.name}.md"

    def stop(self) -> list[str]:
        """Stop py-spy (it writes its output on SIGINT), then the worker; notes about what was saved."""
        notes = []
        if self.spy is not None:
            self.spy.stop(grace=30, signum=signal.SIGINT)
            if self.profile_path.exists():
                summary = summarize(self.profile_path)
                summary_path = self.profile_path.with_suffix(".md")
                summary_path.write_text(summary)
                notes.append(f"profile: {summary_path}")
            self.spy = None
        if self.managed is not None and self.config.callgrind:
            self.instructions = procs.callgrind_dump(self.managed.pid, self.callgrind_path)
            notes.append(f"callgrind: {self.callgrind_path}.*")
        if self.managed is not None:
            code = self.managed.stop(grace=120 if self.config.callgrind else 20)
            if code != 0:
                notes.append(f"worker exited with {code} on SIGTERM")
            self.managed = None
            if self.config.loop_stats and self.loop_stats_path.exists():
                notes.append(f"loop stats: {self.loop_stats_path}")
        if self.sink is not None and "OTEL_EXPORTER_OTLP_ENDPOINT" in self.env:
            notes.append(f"tracing: {self.sink.exports} OTLP exports received")
            self.sink.__exit__()
            del self.env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        return notes


def _publish_and_wait(
    config: RunConfig, label: str, prefix: str, count: int, pid: int,
    routing_key: str = amqp.COMMAND_KEY, rate: float | None = None,
) -> Measured:  # fmt: skip
    job = amqp.PublishJob(config.amqp_url, routing_key, prefix, count, rate=rate)
    plan = Plan(
        label, config.amqp_url, prefix, count, publish=job, pid=pid, max_seconds=config.max_seconds(count)
    )
    return run(plan)


def worker(config: RunConfig, sim: Simulator, store: str, *, paced: bool = True) -> list[Row]:
    """The worker, already consuming: flooded with ``commands``, then paced."""
    amqp.purge_worker_queues(config.amqp_url)
    runner = Worker(config, sim, store, f"worker-{store}-{sim.latency_ms:g}ms")
    try:
        rows = _flood_and_paced(config, sim, f"worker [{store}]", amqp.COMMAND_KEY, runner.start(), paced)
    finally:
        notes = runner.stop()
    rows[0].notes.extend(notes)
    if runner.instructions is not None and rows[0].commands:
        rows[0].notes.append(
            f"callgrind: {runner.instructions / rows[0].commands:,.0f} instructions a command"
        )
    return rows


def backlog(config: RunConfig, sim: Simulator, store: str) -> list[Row]:
    """``backlog`` commands queued before the worker starts: drain rate and peak RSS."""
    amqp.purge_worker_queues(config.amqp_url)
    prefix = _prefix("backlog")
    job = amqp.PublishJob(config.amqp_url, amqp.COMMAND_KEY, prefix, config.backlog)
    say(f"backlog [{store}]: publishing {config.backlog} commands before the worker starts")
    amqp.publish(job, multiprocessing.Value("q", 0))
    depth = amqp.wait_for_depth(config.amqp_url, amqp.WORKER_QUEUE, config.backlog, timeout=60)
    if depth < config.backlog:
        say(f"backlog [{store}]: only {depth} of {config.backlog} commands queued")
    runner = Worker(config, sim, store, f"worker-{store}-backlog")
    calls = sim.sent()
    plan = Plan(f"backlog [{store}]", config.amqp_url, prefix, config.backlog, launch=runner.start,
                max_seconds=config.max_seconds(config.backlog))  # fmt: skip
    try:
        measured = run(plan)
        calls = sim.sent() - calls
    finally:
        notes = runner.stop()
        amqp.purge_worker_queues(config.amqp_url)  # what a failed start left behind
    row = _row("backlog drain", f"worker [{store}]", sim.latency_ms, measured, calls)
    row.notes.extend(notes)
    return [row]


def replays(config: RunConfig, sim: Simulator, store: str) -> list[Row]:
    """``replays`` completed commands published again with the same ids: the rate of their events."""
    amqp.purge_worker_queues(config.amqp_url)
    system = f"worker [{store}]"
    prefix = _prefix("replay")
    runner = Worker(config, sim, store, f"worker-{store}-replays")
    try:
        pid = runner.start()
        first = _publish_and_wait(config, f"replays [{store}] first pass", prefix, config.replays, pid)
        calls = sim.sent()
        again = _publish_and_wait(config, f"replays [{store}] again", prefix, config.replays, pid)
        calls = sim.sent() - calls
    finally:
        notes = runner.stop()
    row = _row("replays", system, sim.latency_ms, again, calls)
    row.notes.extend(notes)
    if first.missing:
        row.notes.append(f"first pass: {first.missing} events missing")
    return [row]
