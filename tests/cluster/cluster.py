"""A local three-node RabbitMQ cluster from this machine's own RabbitMQ installation.

::

    python -m tests.cluster.cluster start     # prints SWITCHBOARD_AMQP_URL for the cluster
    python -m tests.cluster.cluster status
    python -m tests.cluster.cluster stop [--keep-data]

Nodes ``sb1@localhost``..``sb3@localhost`` run as the ``rabbitmq`` user (the
package's user, whose Erlang cookie in /var/lib/rabbitmq they share, so
``rabbitmqctl -n sb2@localhost`` works as for the default node) with their own
AMQP ports (5681-5683), distribution ports (25681-25683), optional
management ports (15681-15683), config, data and log directories under
``/tmp/switchboard-cluster`` (owned by ``rabbitmq``). They are started one
after the other (two cores are shared) and ``sb2``/``sb3`` join ``sb1``.

The default node (``rabbit@localhost`` on 5672) is never touched: every
command here names one of our own nodes with ``-n``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE = Path(os.environ.get("SWITCHBOARD_TEST_CLUSTER_DIR", "/tmp/switchboard-cluster"))
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
RABBITMQ_HOME = "/var/lib/rabbitmq"  # the rabbitmq user's home: its .erlang.cookie
VHOST = "switchboard-cluster"
USER = "guest"
PASSWORD = "guest"


@dataclass(frozen=True)
class Node:
    index: int

    @property
    def name(self) -> str:
        return f"sb{self.index}@localhost"

    @property
    def amqp_port(self) -> int:
        return 5680 + self.index

    @property
    def dist_port(self) -> int:
        return 25680 + self.index

    @property
    def management_port(self) -> int:
        return 15680 + self.index

    @property
    def home(self) -> Path:
        return BASE / f"sb{self.index}"

    def url(self, vhost: str = VHOST) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.amqp_port}/{vhost}"


NODES = (Node(1), Node(2), Node(3))

DEAD_LETTER_RETRY_MS = 5000
ADVANCED_CONFIG = f"""[{{rabbit, [
  %% What deploy/rabbitmq/advanced.config sets (README: Broker cluster). A wait queue's expired
  %% command that switchboard.pidj refuses while it elects a leader is sent again after this
  %% long; RabbitMQ's default, 180 s, outlasted the drill and looked like a lost command.
  {{dead_letter_worker_publisher_confirm_timeout, {DEAD_LETTER_RETRY_MS}}}
]}}].
"""


def amqp_url(vhost: str = VHOST) -> str:
    """``SWITCHBOARD_AMQP_URL`` for the whole cluster: the first URL, then host:port of the others."""
    first, *rest = NODES
    return ",".join([first.url(vhost), *(f"127.0.0.1:{n.amqp_port}" for n in rest)])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ctl(node: Node, *args: str, timeout: float = 120.0, check: bool = True) -> str:
    """rabbitmqctl against one of our nodes (as the rabbitmq user, for its cookie)."""
    result = subprocess.run(
        [
            "runuser",
            "-u",
            "rabbitmq",
            "--",
            "env",
            f"HOME={RABBITMQ_HOME}",
            CTL,
            "-n",
            node.name,
            "-q",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _write_files(node: Node, management: bool) -> dict[str, str]:
    """The node's config, plugins and env files; returns its environment."""
    for sub in ("mnesia", "log"):
        (node.home / sub).mkdir(parents=True, exist_ok=True)
    config = [
        f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}",
        "loopback_users.guest = true",
        # A node that loses the others stops serving rather than splitting the queues.
        "cluster_partition_handling = pause_minority",
        "vm_memory_high_watermark.relative = 0.2",
        "disk_free_limit.absolute = 50MB",
    ]
    if management:
        config += [f"management.tcp.port = {node.management_port}", "management.tcp.ip = 127.0.0.1"]
    (node.home / "rabbitmq.conf").write_text("\n".join(config) + "\n")
    (node.home / "enabled_plugins").write_text("[rabbitmq_management].\n" if management else "[].\n")
    (node.home / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
    (node.home / "advanced.config").write_text(ADVANCED_CONFIG)
    subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(node.home)], check=True)
    return {
        "HOME": RABBITMQ_HOME,
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "RABBITMQ_NODENAME": node.name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(node.amqp_port),
        "RABBITMQ_DIST_PORT": str(node.dist_port),
        "RABBITMQ_CONFIG_FILE": str(node.home / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(node.home / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.home / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(node.home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(node.home / "log"),
        "RABBITMQ_PID_FILE": str(node.home / "node.pid"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.home / "advanced.config"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "LANG": "C.UTF-8",
    }


def _env_of(node: Node) -> dict[str, str]:
    return _write_files(node, (node.home / "enabled_plugins").read_text().strip() != "[].")


def start_node(node: Node, *, management: bool = False, timeout: float = 120.0) -> None:
    """Start one node (its data kept from before, if any) and wait until it runs."""
    env = _write_files(node, management) if not (node.home / "rabbitmq.conf").exists() else _env_of(node)
    with (node.home / "log" / "console.log").open("ab") as console:
        subprocess.Popen(
            ["runuser", "-u", "rabbitmq", "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), SERVER],
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=RABBITMQ_HOME,
        )
    # await_startup needs the VM registered with epmd first: retry until then.
    deadline = time.monotonic() + timeout
    while True:
        try:
            ctl(node, "await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def running(node: Node) -> bool:
    if not port_open(node.amqp_port):
        return False
    try:
        ctl(node, "status", timeout=30)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def os_pid(node: Node) -> int:
    """The node's VM process id, from the pid file the server writes at start (asking the node
    with rabbitmqctl costs seconds on a loaded machine, and a drill's kill must land on time)."""
    with contextlib.suppress(OSError, ValueError):
        return int((node.home / "node.pid").read_text().strip())
    return int(ctl(node, "eval", "list_to_integer(os:getpid()).").strip())


def kill_node(node: Node) -> None:
    """SIGKILL the node's Erlang VM: a crash, not a shutdown."""
    os.kill(os_pid(node), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while port_open(node.amqp_port) and time.monotonic() < deadline:
        time.sleep(0.2)


def registered(node: Node) -> bool:
    """The node's VM is up (registered with epmd), even if RabbitMQ in it is not (yet)."""
    names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, timeout=10, check=False)
    return f"name {node.name.split('@')[0]} at port" in names.stdout


def stop_node(node: Node) -> None:
    """Stop the node's VM (``rabbitmqctl stop``: a clean shutdown) and wait until it is gone."""
    if registered(node):
        ctl(node, "stop", timeout=120, check=False)
    deadline = time.monotonic() + 60
    while (registered(node) or port_open(node.amqp_port)) and time.monotonic() < deadline:
        time.sleep(0.2)


def members(node: Node) -> list[str]:
    """Running nodes of the cluster, as ``node`` sees them."""
    out = ctl(node, "eval", "rabbit_nodes:all_running().")
    return sorted(part.strip(" []'\n") for part in out.split(",") if part.strip(" []'\n"))


def any_running() -> Node:
    for node in NODES:
        if running(node):
            return node
    raise RuntimeError("no cluster node is running")


def wait_for_members(count: int, timeout: float = 120.0) -> None:
    """Until some running node sees ``count`` nodes running in the cluster."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if len(members(any_running())) >= count:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster did not get back to {count} running nodes in {timeout:.0f}s")
        time.sleep(0.5)


def leader_of(queue: str, vhost: str = VHOST) -> Node:
    """The node that leads a quorum queue now."""
    out = ctl(any_running(), "list_queues", "-p", vhost, "name", "leader", timeout=60)
    for line in out.splitlines():
        name, _, leader = line.partition("\t")
        if name == queue:
            return next(n for n in NODES if n.name == leader.strip())
    raise RuntimeError(f"no queue {queue} in vhost {vhost}")


HELD_QUERY = """[begin
    {ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"%(vhost)s">>, queue, Name)),
    {ok, {_, O}, _} = ra:leader_query(amqqueue:get_pid(Q), fun rabbit_fifo:overview/1),
    {Name, maps:get(num_discarded, O, 0) + maps:get(num_discard_checked_out, O, 0)}
  end || Name <- [%(names)s]]."""


def held_dead_letters(queues: list[str], vhost: str = VHOST) -> dict[str, int]:
    """Messages each quorum queue has dead-lettered (at-least-once) but not yet handed over.

    They are in no queue's ready count: a wait queue whose expired command is still on its way
    back to ``switchboard.commands`` looks empty to ``queue.declare``.
    """
    query = HELD_QUERY % {"vhost": vhost, "names": ",".join(f'<<"{q}">>' for q in queues)}
    out = ctl(any_running(), "eval", query, timeout=60)
    return {name: int(count) for name, count in re.findall(r'<<"([^"]+)">>,(\d+)', out)}


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url.split(",")[0]).path.lstrip("/")) or "/"


def setup_vhost(vhost: str = VHOST) -> None:
    first = NODES[0]
    ctl(first, "add_vhost", vhost, check=False)
    ctl(first, "set_permissions", "-p", vhost, USER, ".*", ".*", ".*")


def start(*, management: bool = False, fresh: bool = True) -> str:
    """Start the three nodes (reusing them when they already run clustered); returns the cluster URL."""
    if all(running(n) for n in NODES) and len(members(NODES[0])) == len(NODES):
        setup_vhost()
        return amqp_url()
    for node in NODES:
        stop_node(node)
    if fresh and BASE.exists():
        shutil.rmtree(BASE)
    BASE.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "rabbitmq:rabbitmq", str(BASE)], check=True)
    for node in NODES:
        busy = [p for p in (node.amqp_port, node.dist_port) if port_open(p)]
        if busy:
            raise RuntimeError(f"ports {busy} for {node.name} are taken by something else")
    first, *others = NODES
    start_node(first, management=management)
    for node in others:
        start_node(node, management=management)
        ctl(node, "stop_app")
        ctl(node, "join_cluster", first.name)
        ctl(node, "start_app")
    setup_vhost()
    return amqp_url()


def stop(*, keep_data: bool = False) -> None:
    for node in reversed(NODES):
        stop_node(node)
    if not keep_data and BASE.exists():
        shutil.rmtree(BASE)


@contextlib.contextmanager
def running_cluster(*, vhost: str | None = None, keep: bool = False) -> Iterator[str]:
    """The cluster for a test or a drill, with a vhost of its own (default: one per process);
    stopped afterwards unless ``keep`` or it was already running (then only the vhost goes)."""
    vhost = vhost or f"switchboard-cluster-{os.getpid()}"
    BASE.parent.mkdir(parents=True, exist_ok=True)
    # One cluster per machine: a second test run or drill waits for the first to finish.
    with open(BASE.parent / "switchboard-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        was_running = all(running(n) for n in NODES)
        start()
        setup_vhost(vhost)
        try:
            yield amqp_url(vhost)
        finally:
            if not keep and not was_running:
                stop()
            elif all(running(n) for n in NODES):
                ctl(NODES[0], "delete_vhost", vhost, check=False)


def available() -> str | None:
    """Why a cluster cannot be started here (None = it can)."""
    if not Path(SERVER).exists():
        return f"no RabbitMQ installation at {SERVER}"
    if os.geteuid() != 0:
        return "starting nodes as the rabbitmq user needs root"
    if shutil.which("runuser") is None:
        return "no runuser"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.cluster", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="start the three nodes and cluster them")
    start_cmd.add_argument(
        "--management", action="store_true", help="enable the management plugin (15681-15683)"
    )
    sub.add_parser("status", help="which nodes run, and the cluster they see")
    stop_cmd = sub.add_parser("stop", help="stop the three nodes")
    stop_cmd.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "start":
        problem = available()
        if problem:
            print(problem, file=sys.stderr)
            return 2
        url = start(management=args.management)
        print(f"SWITCHBOARD_AMQP_URL={url}")
    elif args.command == "status":
        for node in NODES:
            state = "running" if running(node) else "stopped"
            print(f"{node.name:16} amqp {node.amqp_port} dist {node.dist_port} {state}")
        if running(NODES[0]):
            print("cluster:", ", ".join(members(NODES[0])))
    else:
        stop(keep_data=args.keep_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
