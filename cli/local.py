"""A local cluster as processes: nats-server, one or two schedulers, host agents (and their fence
guards with the qemu driver). ``stratus up`` (cli/up.py) and ``stratus demo`` (cli/demo.py) run
one in the foreground; this module starts, watches and stops it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError

from cli import output, qemukit
from cli.client import StratusClient
from common import messages as m, procs
from common.errors import ApiError, StratusError
from common.natsserver import NatsServer, start_nats_server
from common.waiting import poll, poll_sync
from hostagent.fenceguard import guard_pid
from hostagent.replicaserver import stop_replica_servers
from scheduler.shell.leader import LEASE_BUCKET, LEASE_KEY, LeaseHolder

DEFAULT_PORT = 4222
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05
GUARD_START_S = 10.0
MAX_SCHEDULERS = 2
LOCAL_HOSTS = 3


@dataclass
class Child:
    """One daemon of the local cluster, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    exit_reported: bool = False

    def describe_exit(self) -> str:
        return f"{self.name} exited with code {self.process.returncode}; see {self.log_path}"


@dataclass(frozen=True)
class ClusterSpec:
    data_dir: Path
    hosts: int = LOCAL_HOSTS
    driver: str = "fake"
    capacity: str = "16c/64g"
    nats_port: int = -1
    log_level: str = "INFO"
    agent_config: Path | None = None
    boot_dir: Path | None = None
    """qemu driver: the boot kit; the scheduler gets the Tiny size and the image ``tiny``."""
    http_listen: str | None = None
    """Where the scheduler serves the portal and HTTP API (None: not at all)."""
    api_token: str = ""
    """The bearer token of that API (handed to the scheduler in its environment, not argv)."""
    schedulers: int = 1
    """1: one scheduler; 2: a leader and a standby, each with its own store."""

    @property
    def host_ids(self) -> list[str]:
        return [f"host-{index}" for index in range(1, self.hosts + 1)]

    @property
    def scheduler_names(self) -> list[str]:
        """``scheduler`` (store ``scheduler.db``), then ``scheduler-2`` (``scheduler-2.db``)."""
        return ["scheduler", *(f"scheduler-{i}" for i in range(2, self.schedulers + 1))]

    def db_path(self, scheduler: str) -> Path:
        return self.data_dir / f"{scheduler}.db"

    def http_of(self, scheduler: str) -> str | None:
        """The HTTP address of a scheduler: ``http_listen`` for the first, the next ports for
        the others (each serves only while it leads; a frozen one would keep its port)."""
        if not self.http_listen:
            return None
        offset = self.scheduler_names.index(scheduler)
        host, _, port = self.http_listen.rpartition(":")
        return f"{host}:{int(port) + offset}" if offset else self.http_listen


@dataclass
class LocalCluster:
    spec: ClusterSpec
    nats: NatsServer
    schedulers: dict[str, Child]
    agents: dict[str, Child] = field(default_factory=dict)
    guards: dict[str, Child] = field(default_factory=dict)
    """qemu driver: each host's fence guard, restarted whenever it dies (``keep_guards``)."""

    @property
    def url(self) -> str:
        return self.nats.url

    @property
    def children(self) -> list[Child]:
        return [*self.schedulers.values(), *self.agents.values(), *self.guards.values()]

    @property
    def logs_dir(self) -> Path:
        return self.spec.data_dir / "logs"

    def keep_guards(self) -> list[str]:
        """Start again every fence guard that exited (unless another guard holds its host, as
        one the agent started itself may); the hosts whose guard was restarted."""
        restarted = []
        agents_dir = self.spec.data_dir / "agents"
        for host, child in self.guards.items():
            if child.process.poll() is None or guard_pid(agents_dir, host) is not None:
                continue
            self.guards[host] = spawn(child.name, guard_args(self.spec, host), child.log_path)
            restarted.append(host)
        return restarted

    def check_scheduler(self) -> None:
        """Raise when no scheduler runs any more (an agent may die on purpose, as the demo
        kills one; so may a leader that has a standby)."""
        if all(child.process.poll() is not None for child in self.schedulers.values()):
            raise StratusError("; ".join(c.describe_exit() for c in self.schedulers.values()))

    def scheduler_of_node(self, node: str) -> str | None:
        """The scheduler whose store carries the node id ``node`` (the lease names nodes)."""
        for name in self.schedulers:
            path = Path(f"{self.spec.db_path(name)}.node")
            with contextlib.suppress(OSError):
                if path.read_text().strip() == node:
                    return name
        return None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """SIGTERM every daemon, SIGKILL what is left after ``timeout_s``, then stop NATS.

        Returns the names of the daemons that had to be killed."""
        killed = procs.stop_all([child.process for child in self.children], timeout_s)
        if self.spec.boot_dir is not None:
            qemukit.stop_guests(self.spec.data_dir / "agents", timeout_s)
            stop_replica_servers(self.spec.data_dir / "agents")  # they outlive their agents
        self.nats.stop(timeout_s)
        return [child.name for child in self.children if child.process.pid in killed]


def describe_cluster(cluster: LocalCluster) -> str:
    data = cluster.spec.data_dir
    rows = [("nats", cluster.url, f"store {data / 'nats'}")]
    for name, child in cluster.schedulers.items():
        rows.append((name, f"pid {child.process.pid}", f"log {child.log_path}"))
        rows.append(("", "", f"db {cluster.spec.db_path(name)}"))
    for host, child in cluster.agents.items():
        rows.append((host, f"pid {child.process.pid}", f"log {child.log_path}"))
    rows.append(("audit", "", f"{data / 'agents'}/<host>/executions.jsonl"))
    return output.columns(rows, indent="  ")


async def leader_of(nc: Client, cluster: LocalCluster) -> str | None:
    """The name of the scheduler that holds the leader lease (None: none, or not known yet)."""
    try:
        kv = await nc.jetstream(timeout=1.0).key_value(LEASE_BUCKET)
        entry = await kv.get(LEASE_KEY)
        holder = msgspec.json.decode(entry.value or b"", type=LeaseHolder)
    except (NatsError, TimeoutError, msgspec.DecodeError):
        return None
    return cluster.scheduler_of_node(holder.node)


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM if the CLI dies, so nothing is orphaned."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def spawn(name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Child:
    """Start a daemon in its own session (Ctrl-C reaches only the CLI, which stops it)."""
    die_with_parent = _die_with_parent if sys.platform == "linux" else None
    process = procs.spawn(args, log_path, env=env, new_session=True, preexec_fn=die_with_parent)
    return Child(name, process, log_path)


def scheduler_args(url: str, spec: ClusterSpec, name: str = "scheduler") -> list[str]:
    http = spec.http_of(name)
    return [
        *(sys.executable, "-m", "scheduler", "--nats", url, "--db", str(spec.db_path(name))),
        *("--log-level", spec.log_level),
        *(
            ("--config", str(qemukit.scheduler_config(spec.data_dir, spec.boot_dir)))
            if spec.boot_dir
            else ()
        ),
        *(("--http", http) if http else ()),
    ]


def scheduler_env(spec: ClusterSpec) -> dict[str, str]:
    """The scheduler's environment: ours, with the API token (never a flag: ps shows flags)."""
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_API_TOKEN"}
    if spec.api_token:
        env["STRATUS_API_TOKEN"] = spec.api_token
    return env


LOCAL_UNDERLAY_IP = "127.0.0.1"
"""The underlay address of a local cluster's agents (all on this machine): their endpoints
answer on this machine's loopback; an --agent-config file may say otherwise."""


def agent_args(url: str, spec: ClusterSpec, index: int) -> list[str]:
    return [
        *(sys.executable, "-m", "hostagent", "--nats", url),
        *("--host-id", f"host-{index}", "--capacity", spec.capacity),
        *("--region", "local", "--fault-domain", f"fd-{index}"),
        *("--data-dir", str(spec.data_dir / "agents"), "--driver", spec.driver),
        *("--log-level", spec.log_level),
        *(("--config", str(spec.agent_config)) if spec.agent_config else ()),
        *(() if spec.agent_config else ("--underlay-ip", LOCAL_UNDERLAY_IP)),
        # All on one address: each agent's replica server takes a free port (and reports it).
        *(() if spec.agent_config else ("--replica-port", "0")),
        *(("--boot-dir", str(spec.boot_dir)) if spec.boot_dir else ()),
    ]


def guard_args(spec: ClusterSpec, host: str) -> list[str]:
    """A supervised fence guard for ``host``: it never leaves on its own, and ``stratus up``
    restarts it, so a guard killed together with its agent still pauses the host's VMs."""
    return [
        *(sys.executable, "-m", "hostagent.fenceguard"),
        *("--data-dir", str(spec.data_dir / "agents"), "--host-id", host, "--supervised"),
    ]


def _wait_guard(spec: ClusterSpec, host: str, guard: Child) -> None:
    """Until the guard holds its host (so the agent uses it instead of starting its own)."""

    def holding() -> bool | None:
        if guard_pid(spec.data_dir / "agents", host) is not None:
            return True
        return False if guard.process.poll() is not None else None

    if not poll_sync(holding, timeout_s=GUARD_START_S, interval_s=POLL_S):
        raise StratusError(f"the fence guard of {host} did not start; see {guard.log_path}")


def start_cluster(spec: ClusterSpec) -> LocalCluster:
    """Start nats-server, the schedulers and ``spec.hosts`` agents (each after its fence
    guard, with the qemu driver); stop them all on failure."""
    if not 1 <= spec.schedulers <= MAX_SCHEDULERS:
        raise StratusError(f"--schedulers must be 1 or {MAX_SCHEDULERS}")
    nats = start_nats_server(spec.data_dir / "nats", port=spec.nats_port)
    logs = spec.data_dir / "logs"
    schedulers: dict[str, Child] = {}
    agents: dict[str, Child] = {}
    guards: dict[str, Child] = {}
    try:
        if spec.driver == "qemu":
            for host in spec.host_ids:
                guard = spawn(f"guard-{host}", guard_args(spec, host), logs / f"guard-{host}.log")
                guards[host] = guard
                _wait_guard(spec, host, guard)
        env = scheduler_env(spec)
        for name in spec.scheduler_names:
            args = scheduler_args(nats.url, spec, name)
            schedulers[name] = spawn(name, args, logs / f"{name}.log", env=env)
        for index, host in enumerate(spec.host_ids, start=1):
            agents[host] = spawn(host, agent_args(nats.url, spec, index), logs / f"{host}.log")
    except (OSError, StratusError):
        everything = [*schedulers.values(), *agents.values(), *guards.values()]
        procs.stop_all([child.process for child in everything], STOP_TIMEOUT_S)
        nats.stop()
        raise
    return LocalCluster(spec, nats, schedulers, agents, guards)


async def wait_hosts_up(
    client: StratusClient, cluster: LocalCluster, timeout_s: float
) -> list[m.HostInfo]:
    """Poll ``host.list`` until every host of the cluster is ``up``."""
    wanted = set(cluster.spec.host_ids)

    async def all_up() -> list[m.HostInfo] | None:
        cluster.check_scheduler()
        for child in cluster.agents.values():
            if child.process.poll() is not None:
                raise StratusError(child.describe_exit())
        with contextlib.suppress(ApiError):  # the scheduler may not be serving yet
            hosts = [host for host in await client.list_hosts() if host.host_id in wanted]
            if sum(host.state is m.HostState.UP for host in hosts) == len(wanted):
                return hosts
        return None

    hosts = await poll(all_up, timeout_s=timeout_s, interval_s=POLL_S)
    if hosts is None:
        raise StratusError(f"hosts not up after {timeout_s:g}s; logs in {cluster.logs_dir}")
    return hosts


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- in the foreground


def say(text: str = "") -> None:
    print(text, flush=True)


def section(title: str) -> None:
    say()
    say(f"== {title} ==")


def clock() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S.%f")[:-3]


def report_killed(names: list[str]) -> None:
    for name in names:
        say(f"{name} did not stop within {STOP_TIMEOUT_S:g}s of SIGTERM; killed it")


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: stop the foreground cluster as Ctrl-C does."""
    raise KeyboardInterrupt
