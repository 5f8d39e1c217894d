"""The crash drill: several workers, a faulty vendor, SIGKILLs and a broker restart.

``run_drill(DrillConfig(...))`` publishes a mix of safe and unsafe Pidj
commands (some twice) to workers sharing one idempotency store, while the
simulator injects 5xx, timeouts and 429 bursts, a worker is SIGKILLed and
restarted every few seconds, and RabbitMQ's app is restarted once. It then
checks (see :mod:`tests.drills.summary`): one terminal outcome per command,
no unsafe side effect twice, every ambiguous outcome reported as
``outcome_unknown``, the dead-letter queue holding exactly the failures, and
every queue empty.

    python -m tests.drills.crash --commands 10000 --workers 3 [--store URL]

prints a summary table and exits 1 when a check fails. It uses the test vhost
(``tests.support.amqp.AMQP_URL``); ``SWITCHBOARD_DRILL_RABBITMQCTL`` may point
the broker restart at another node.

    python -m tests.drills.crash --cluster --commands 10000 --workers 3

runs it on the local three-node cluster (:mod:`tests.cluster.cluster`, started
and stopped around the drill) instead: the workers get every node's address,
and instead of one broker restart the node leading ``switchboard.pidj`` is
stopped and started again (at a third of the publishing), then another node is
SIGKILLed and started again (at two thirds), while workers are SIGKILLed as usual.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from tests.drills.broker import EventCollector, Publisher, queue_depths, restart_broker_app, wait_for_broker
from tests.drills.simulator import DrillSimulator, FaultMix
from tests.drills.summary import Observations, Published, Summary, analyze
from tests.support import amqp
from tests.support.amqp import command_body, drain_queue, ensure_vhost
from tests.support.worker import SWITCHBOARD, WorkerProcess
from worker import topology

PRIMARY_NUMBER = "+18885552222"
AREA_CODES = ("888", "877", "866", "855", "844", "833")
MIX_TYPES = ("send_text", "initiate_task", "create_contact", "list_groups")
MIX_WEIGHTS = (0.45, 0.15, 0.25, 0.15)
WORK_QUEUES = (
    topology.vendor_queue("pidj"),
    topology.UNROUTED_QUEUE,
    *(topology.delay_queue(s) for s in topology.DELAY_BUCKETS_SECONDS),
)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DrillConfig:
    commands: int = 2000
    workers: int = 3
    store_url: str | None = None
    """Shared by every worker; None = a fresh sqlite file. A redis:// database is flushed first."""
    rate: float = 100.0
    """Commands published per second (kills and the restart happen while publishing)."""
    kill_every: float | None = 5.0
    min_kills: int = 0
    """Keep killing (every ``kill_every``) after publishing ends until this many kills happened."""
    restart_broker: bool = True
    faults: FaultMix = field(default_factory=FaultMix)
    duplicate_share: float = 0.05
    settle_timeout: float = 180.0
    """How long to wait for the last terminal events once publishing is done."""
    seed: int | None = None
    log_dir: Path | None = None
    """Where to keep every worker's log (kept only when given)."""
    max_in_flight: int = 64
    quiet_timeout: float = 60.0
    """How long to wait, after the last terminal event, for every queue to empty."""
    cluster: bool = False
    """On the local cluster (the caller points tests.support.amqp at it): node stop + node kill, no app restart."""
    lease_seconds: float | None = None
    """SWITCHBOARD_LEASE_SECONDS for the workers; None = the worker's default, as users run it."""


def phone_number(index: int) -> str:
    """A distinct valid North American toll-free number per command."""
    return f"+1{AREA_CODES[index // 10000 % len(AREA_CODES)]}555{index % 10000:04d}"


def build_commands(
    run: str, config: DrillConfig, rng: random.Random, simulator: DrillSimulator
) -> tuple[dict[str, Published], list[tuple[str, bytes, str]]]:
    """The commands (id -> type, copies) and the messages to publish, duplicates included."""
    commands: dict[str, Published] = {}
    messages: list[tuple[str, bytes, str]] = []
    for index in range(config.commands):
        command_id = f"drill-{run}-{index:06d}"
        command_type = rng.choices(MIX_TYPES, MIX_WEIGHTS)[0]
        payload: dict[str, Any] = {}
        if command_type == "send_text":
            payload = {
                "to_number": phone_number(index),
                "from_number": PRIMARY_NUMBER,
                "text_body": f"drill {command_id}",
            }
        elif command_type == "initiate_task":
            payload = {"channel": "ticket", "subject": f"drill {command_id}", "topic": "crash drill"}
        elif command_type == "create_contact":
            payload = {"phone_number": phone_number(index), "external_id": command_id}
            simulator.contact_owner[phone_number(index)] = command_id
        _, body = command_body(command_type, payload, id=command_id)
        commands[command_id] = Published(command_type)
        messages.append((command_type, body, command_id))
    for command_id, published in list(commands.items()):
        if rng.random() < config.duplicate_share:
            published.copies += 1
            original = next(i for i, m in enumerate(messages) if m[2] == command_id)
            again = messages[original]
            messages.insert(rng.randint(original + 1, len(messages)), again)
    return commands, messages


def worker_env(simulator: DrillSimulator, config: DrillConfig, store_url: str) -> dict[str, str]:
    account = simulator.account()
    return {
        "SWITCHBOARD_VENDORS": "pidj",
        "SWITCHBOARD_PIDJ_BASE_URL": account["base_url"],
        "SWITCHBOARD_PIDJ_ACCOUNT_KEY": account["account_key"],
        "SWITCHBOARD_PIDJ_TOKEN": account["token"],
        "SWITCHBOARD_STORE_URL": store_url,
        # The lease is the worker's default unless the drill is told otherwise: how long a
        # killed worker's commands stay blocked is part of what the drill measures.
        **({} if config.lease_seconds is None else {"SWITCHBOARD_LEASE_SECONDS": str(config.lease_seconds)}),
        "SWITCHBOARD_HANDLER_TIMEOUT_SECONDS": "3",
        # Below the simulator's slow delay: those answers are ambiguous timeouts.
        "SWITCHBOARD_VENDOR_TIMEOUT_SECONDS": str(max(0.2, config.faults.slow_delay - 0.5)),
        "SWITCHBOARD_DEFER_SECONDS": "1",
        "SWITCHBOARD_BREAKER_FAILURES": "100000",
        "SWITCHBOARD_RETRY_BASE_SECONDS": "0.2",
        "SWITCHBOARD_RETRY_MAX_SECONDS": "5",
        "SWITCHBOARD_MAX_ATTEMPTS": "8",
        "SWITCHBOARD_MAX_IN_FLIGHT": str(config.max_in_flight),
        "SWITCHBOARD_SHUTDOWN_GRACE_SECONDS": "10",
        "SWITCHBOARD_AMQP_URL": amqp.AMQP_URL,
    }


def prepare_broker(*, cluster: bool = False) -> None:
    """The test vhost with Switchboard's topology, its queues empty (the cluster's vhost is made by its script)."""
    if not cluster:
        ensure_vhost()
    env = {**os.environ, "SWITCHBOARD_AMQP_URL": amqp.AMQP_URL}
    subprocess.run(
        [str(SWITCHBOARD), "topology", "declare"], check=True, capture_output=True, timeout=60, env=env
    )
    # Delay queues first: what they hold would otherwise come back into the vendor queue after it was emptied.
    for name in (*reversed(WORK_QUEUES), topology.DEAD_QUEUE):
        drain_queue(name)


@contextlib.contextmanager
def shared_store(store_url: str | None) -> Iterator[str]:
    """The store URL the workers share: a flushed Redis database or a new sqlite file."""
    if store_url is not None:
        if store_url.startswith(("redis://", "rediss://")):
            redis.Redis.from_url(store_url).flushdb()
        yield store_url
        return
    with tempfile.TemporaryDirectory(prefix="switchboard-drill-") as tmp:
        yield f"sqlite:///{tmp}/shared.sqlite3"


class Workers:
    """The worker processes; any one of them can be SIGKILLed and replaced."""

    def __init__(self, env: dict[str, str], count: int, log_dir: Path | None) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes = [self._spawn(wait=True) for _ in range(count)]

    def _spawn(self, *, wait: bool) -> WorkerProcess:
        return WorkerProcess(self.env, wait_ready=wait, ready_timeout=60).start()

    def _retire(self, process: WorkerProcess) -> None:
        """Stop it (SIGTERM, then SIGKILL) and, with a log dir, keep its log."""
        if self.log_dir is not None:
            with contextlib.suppress(Exception):
                if process.process is not None and process.process.poll() is None:
                    process.terminate(30)
            if process.log_path.exists():
                shutil.copy(process.log_path, self.log_dir / f"worker-{process.port}.log")
        process.__exit__(None, None, None)

    def kill_one(self, rng: random.Random) -> None:
        index = rng.randrange(len(self.processes))
        victim = self.processes[index]
        victim.kill()
        self._retire(victim)
        self.processes[index] = self._spawn(wait=False)

    def replace_crashed(self) -> list[str]:
        """Workers that exited on their own (a bug): restart them and say how each ended."""
        crashed = []
        for index, process in enumerate(self.processes):
            assert process.process is not None
            code = process.process.poll()
            if code is not None:
                last = process.logs().strip().splitlines()[-1:] or ["(no log)"]
                crashed.append(f"worker exited with code {code} by itself; last log line: {last[0][:300]}")
                self._retire(process)
                self.processes[index] = self._spawn(wait=False)
        return crashed

    def ready(self) -> list[bool]:
        return [process.get("/readyz")[0] == 200 for process in self.processes]

    def in_flight(self) -> float:
        return sum(
            process.metric("switchboard_commands_in_flight", vendor=vendor)
            for process in self.processes
            for vendor in ("pidj", "unrouted")
        )

    def stop(self) -> None:
        for process in self.processes:
            self._retire(process)
        self.processes = []


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def run_drill(config: DrillConfig, progress: Progress = lambda _: None) -> Summary:
    """Run the whole drill and return what it saw (``summary.problems()`` empty = passed)."""
    rng = random.Random(config.seed)
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8] if config.seed is not None else uuid.uuid4().hex[:8]
    summary = Summary(workers=config.workers)
    prepare_broker(cluster=config.cluster)
    simulator = DrillSimulator(seed=config.seed)
    for fault in config.faults.faults():
        simulator.add_fault(fault)
    commands, messages = build_commands(run, config, rng, simulator)
    collector = EventCollector(f"switchboard.drill.events.{run}")
    collector.declare()
    started = time.monotonic()
    try:
        with simulator.running_in_thread(), shared_store(config.store_url) as store_url:
            env = worker_env(simulator, config, store_url)
            collector.start()
            workers = Workers(env, config.workers, config.log_dir)
            try:
                progress(
                    f"run {run}: {len(commands)} commands, {len(messages)} messages, {config.workers} workers, store {store_url}"
                )
                publisher = Publisher(messages, config.rate)
                _chaos(config, summary, workers, simulator, publisher, rng, progress)
                settle_started = time.monotonic()
                _settle(config, summary, workers, collector, commands, progress)
                summary.settle_seconds = time.monotonic() - settle_started
            finally:
                workers.stop()
            wait_until(
                lambda: collector.idle.is_set() and queue_depths([collector.queue])[collector.queue] == 0, 30
            )
            collector.stop()
            seen = Observations(
                commands=commands,
                events=collector.snapshot(),
                effects=simulator.effects_by_command(),
                faults=simulator.faults_by_command(),
                dead_letters=[],
                leftovers=_leftovers(config),
                published_at=publisher.sent_at,
            )
            seen.dead_letters = drain_queue(topology.DEAD_QUEUE)
    finally:
        with contextlib.suppress(Exception):
            collector.delete()
    summary.seconds = time.monotonic() - started
    return analyze(summary, seen)


def run_cluster_drill(config: DrillConfig, progress: Progress = lambda _: None) -> Summary:
    """``run_drill`` on the local three-node cluster, started for it and stopped after."""
    from tests.cluster import cluster

    if problem := cluster.available():
        raise SystemExit(f"cannot start the local cluster: {problem}")
    started = time.monotonic()
    with cluster.running_cluster() as url, amqp.use_broker(url):
        progress(f"cluster up in {time.monotonic() - started:.1f}s: {url.split('@')[-1]}")
        return run_drill(replace(config, cluster=True), progress)


def _chaos(
    config: DrillConfig,
    summary: Summary,
    workers: Workers,
    simulator: DrillSimulator,
    publisher: Publisher,
    rng: random.Random,
    progress: Progress,
) -> None:
    """Publish while killing workers, bursting 429s and restarting the broker once (midway)."""
    publish_seconds = len(publisher.messages) / config.rate
    nodes = (
        NodeChaos(summary, publish_seconds, progress) if config.cluster and config.restart_broker else None
    )
    start = time.monotonic()
    next_kill = start + (config.kill_every or float("inf"))
    next_burst = start + (config.faults.burst_every or float("inf"))
    restart_at = (
        start + publish_seconds / 2 + 1.3 if config.restart_broker and not config.cluster else float("inf")
    )
    publisher.start()
    if nodes is not None:
        nodes.start()
    # The broker restart can take most of the publishing window: keep going until the
    # promised number of kills happened, so the drill always hurts as much as it says.
    while publisher.is_alive() or (config.kill_every and summary.kills < config.min_kills):
        now = time.monotonic()
        if now >= next_kill:
            workers.kill_one(rng)
            summary.kills += 1
            next_kill = now + (config.kill_every or float("inf"))
            progress(f"{now - start:6.1f}s  SIGKILL #{summary.kills}; published {publisher.published}")
        summary.crashed.extend(workers.replace_crashed())
        if now >= next_burst:
            simulator.add_fault(config.faults.burst())
            next_burst = now + config.faults.burst_every
        if now >= restart_at:
            restart_at = float("inf")
            _restart_broker(summary, workers, progress)
            next_kill = max(next_kill, time.monotonic() + 1)
        time.sleep(0.05)
    publisher.join()
    if nodes is not None:
        nodes.join()
        if nodes.error is not None:
            summary.notes.append(f"the cluster chaos failed: {nodes.error!r}")
        summary.readyz_came_back = wait_until(lambda: _all_ready(summary, workers), timeout=60, every=0.5)
        if not summary.readyz_came_back:
            summary.notes.append("the workers' /readyz did not all recover within 60 s of the node restarts")
    if publisher.error is not None:
        summary.notes.append(f"the publisher failed: {publisher.error!r}")
    progress(
        f"{time.monotonic() - start:6.1f}s  published all {publisher.published} ({publisher.republished} sent again)"
    )


def _leftovers(config: DrillConfig) -> dict[str, int]:
    """Ready messages per work queue; on the cluster also what each wait queue still holds in its
    at-least-once dead-lettering hop (in no ready count, so it would otherwise look empty)."""
    depths = queue_depths(WORK_QUEUES)
    if config.cluster:
        from tests.cluster import cluster

        delay_queues = [topology.delay_queue(s) for s in topology.DELAY_BUCKETS_SECONDS]
        held = cluster.held_dead_letters(delay_queues, cluster.vhost_of(amqp.AMQP_URL))
        depths.update({f"{name} (dead-lettering)": count for name, count in held.items()})
    return depths


def _all_ready(summary: Summary, workers: Workers) -> bool:
    summary.crashed.extend(workers.replace_crashed())
    return all(workers.ready())


class NodeChaos(threading.Thread):
    """On the cluster: stop the node leading switchboard.pidj and start it again (at 1/3 of the
    publishing), then SIGKILL another node and start it again (at 2/3), beside the worker kills."""

    def __init__(self, summary: Summary, publish_seconds: float, progress: Progress) -> None:
        from tests.cluster import cluster

        super().__init__(name="drill-nodes", daemon=True)
        self.summary = summary
        self.publish_seconds = publish_seconds
        self.progress = progress
        self.error: BaseException | None = None
        # Asked before publishing starts (nothing moves the leader until the stop): rabbitmqctl
        # took up to 44 s on two cores at load 10, which put the stop after the publishing.
        self.leader = cluster.leader_of(topology.vendor_queue("pidj"), cluster.vhost_of(amqp.AMQP_URL))

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the drill, not lost in a thread
            self.error = exc

    def _run(self) -> None:
        from tests.cluster import cluster

        start = time.monotonic()
        leader = self.leader
        time.sleep(max(0.0, self.publish_seconds / 3))
        self.progress(f"{time.monotonic() - start:6.1f}s  stopping {leader.name}, leader of switchboard.pidj")
        cluster.stop_node(leader)
        self.summary.cluster_events.append(f"stopped leader {leader.name}")
        time.sleep(3)
        cluster.start_node(leader)
        cluster.wait_for_members(len(cluster.NODES))
        self.summary.broker_restarts += 1
        self.progress(f"{time.monotonic() - start:6.1f}s  {leader.name} is back in the cluster")
        time.sleep(max(0.0, start + 2 * self.publish_seconds / 3 - time.monotonic()))
        victim = next(n for n in cluster.NODES if n != leader)
        self.progress(f"{time.monotonic() - start:6.1f}s  SIGKILL {victim.name}")
        cluster.kill_node(victim)
        self.summary.node_kills += 1
        self.summary.cluster_events.append(f"killed {victim.name}")
        time.sleep(3)
        cluster.start_node(victim)
        cluster.wait_for_members(len(cluster.NODES))
        self.progress(f"{time.monotonic() - start:6.1f}s  {victim.name} is back in the cluster")


def _restart_broker(summary: Summary, workers: Workers, progress: Progress) -> None:
    """stop_app + start_app; the workers' /readyz must fail while it is down and recover after."""
    watched = [i for i, ready in enumerate(workers.ready()) if ready]

    def while_down() -> None:
        summary.readyz_went_down = bool(watched) and wait_until(
            lambda: not any(workers.ready()[i] for i in watched), timeout=15
        )

    seconds = restart_broker_app(while_down)
    summary.broker_restarts += 1
    wait_for_broker()

    def all_ready() -> bool:
        summary.crashed.extend(workers.replace_crashed())
        return all(workers.ready())

    summary.readyz_came_back = wait_until(all_ready, timeout=60, every=0.5)
    progress(
        f"broker app restarted ({seconds:.1f}s down); readyz down={summary.readyz_went_down} back={summary.readyz_came_back}"
    )
    if not summary.readyz_went_down:
        summary.notes.append("no worker's /readyz failed while the broker was stopped")
    if not summary.readyz_came_back:
        summary.notes.append("the workers' /readyz did not recover within 60 s of the broker restart")


def _settle(
    config: DrillConfig,
    summary: Summary,
    workers: Workers,
    collector: EventCollector,
    commands: dict[str, Published],
    progress: Progress,
) -> None:
    """Wait for a terminal event per command, then for every queue to empty and every worker to idle."""

    def finished() -> bool:
        summary.crashed.extend(workers.replace_crashed())
        done = {
            e.get("command_id")
            for e in collector.snapshot()
            if e.get("status") in ("succeeded", "failed", "rejected")
        }
        return all(command_id in done for command_id in commands)

    if not wait_until(finished, config.settle_timeout, every=0.5):
        summary.notes.append(
            f"not every command had a terminal event {config.settle_timeout:.0f}s after publishing"
        )
    progress("terminal events in; waiting for queues to drain")

    def quiet() -> bool:
        return not any(queue_depths(WORK_QUEUES).values()) and workers.in_flight() == 0

    def quiet_twice() -> bool:
        # A message in a delay queue's dead-lettering hop is in no queue for a moment: look twice.
        if not quiet():
            return False
        time.sleep(1)
        return quiet()

    if not wait_until(quiet_twice, config.quiet_timeout, every=0.5):
        progress(f"queues or workers still busy after {config.quiet_timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.drills.crash", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--store",
        default="redis://127.0.0.1:6379/11",
        help="shared store (a redis:// db is flushed); 'sqlite' = a temp file",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="commands published per second")
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between SIGKILLs (0 = none)")
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--log-dir", type=Path, default=None, help="keep every worker's log here")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on the local three-node cluster (started and stopped here): a leader stop and a node kill",
    )
    parser.add_argument(
        "--lease-seconds", type=float, default=None, help="SWITCHBOARD_LEASE_SECONDS (default: the worker's)"
    )
    args = parser.parse_args(argv)
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    config = DrillConfig(
        commands=args.commands,
        workers=args.workers,
        store_url=None if args.store == "sqlite" else args.store,
        rate=args.rate,
        kill_every=args.kill_every or None,
        restart_broker=not args.no_broker_restart,
        settle_timeout=args.settle_timeout,
        seed=args.seed,
        log_dir=args.log_dir,
        cluster=args.cluster,
        lease_seconds=args.lease_seconds,
    )
    progress: Progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    summary = run_cluster_drill(config, progress) if args.cluster else run_drill(config, progress=progress)
    print(summary.table())
    return 1 if summary.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
