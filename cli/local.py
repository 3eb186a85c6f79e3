"""A local cluster as processes (``stratus up``) and the self-contained failover demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

from cli import output, qemukit
from cli.client import StratusClient, connect
from common import messages as m, procs
from common.errors import ApiError, StratusError
from common.natsserver import NatsServer, start_nats_server
from common.waiting import poll, poll_sync
from hostagent.fenceguard import guard_pid

DEFAULT_PORT = 4222
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05
GUARD_START_S = 10.0

DEMO_CAPACITY = "16c/64g"
DEMO_HOSTS = 3
DEMO_TIMEOUT_S = 60.0
DEMO_VMS: tuple[tuple[str, int], ...] = (
    ("ExtraLarge", 1),
    ("A6", 1),
    ("Large", 1),
    ("Medium", 2),
    ("Small", 3),
    ("ExtraSmall", 4),
)
"""12 VMs, 24 cores and 64.25 GiB in all. Two surviving 16c/64g hosts keep 8 cores and 63.75 GiB
spare, at least the largest VM (8c, 28 GiB), so they take every VM in any placement order."""


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
    hosts: int = DEMO_HOSTS
    driver: str = "fake"
    capacity: str = DEMO_CAPACITY
    nats_port: int = -1
    log_level: str = "INFO"
    agent_config: Path | None = None
    boot_dir: Path | None = None
    http_listen: str | None = None
    """Where the scheduler serves the portal and HTTP API (None: not at all)."""
    api_token: str = ""
    """The bearer token of that API (handed to the scheduler in its environment, not argv)."""
    """qemu driver: the boot kit; the scheduler gets the Tiny size and the image ``tiny``."""

    @property
    def host_ids(self) -> list[str]:
        return [f"host-{index}" for index in range(1, self.hosts + 1)]


@dataclass
class LocalCluster:
    spec: ClusterSpec
    nats: NatsServer
    scheduler: Child
    agents: dict[str, Child] = field(default_factory=dict)
    guards: dict[str, Child] = field(default_factory=dict)
    """qemu driver: each host's fence guard, restarted whenever it dies (``keep_guards``)."""

    @property
    def url(self) -> str:
        return self.nats.url

    @property
    def children(self) -> list[Child]:
        return [self.scheduler, *self.agents.values(), *self.guards.values()]

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
        """Raise if the scheduler died (an agent may die on purpose: the demo kills one)."""
        if self.scheduler.process.poll() is not None:
            raise StratusError(self.scheduler.describe_exit())

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """SIGTERM every daemon, SIGKILL what is left after ``timeout_s``, then stop NATS.

        Returns the names of the daemons that had to be killed."""
        killed = procs.stop_all([child.process for child in self.children], timeout_s)
        if self.spec.boot_dir is not None:
            qemukit.stop_guests(self.spec.data_dir / "agents", timeout_s)
        self.nats.stop(timeout_s)
        return [child.name for child in self.children if child.process.pid in killed]


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM if the CLI dies, so nothing is orphaned."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def spawn(name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Child:
    """Start a daemon in its own session (Ctrl-C reaches only the CLI, which stops it)."""
    die_with_parent = _die_with_parent if sys.platform == "linux" else None
    process = procs.spawn(args, log_path, env=env, new_session=True, preexec_fn=die_with_parent)
    return Child(name, process, log_path)


def scheduler_args(url: str, spec: ClusterSpec) -> list[str]:
    db_path = spec.data_dir / "scheduler.db"
    return [
        *(sys.executable, "-m", "scheduler", "--nats", url, "--db", str(db_path)),
        *("--log-level", spec.log_level),
        *(
            ("--config", str(qemukit.scheduler_config(spec.data_dir, spec.boot_dir)))
            if spec.boot_dir
            else ()
        ),
        *(("--http", spec.http_listen) if spec.http_listen else ()),
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
    """Start nats-server, the scheduler and ``spec.hosts`` agents (each after its fence guard,
    with the qemu driver); stop them all on failure."""
    nats = start_nats_server(spec.data_dir / "nats", port=spec.nats_port)
    logs = spec.data_dir / "logs"
    children: list[Child] = []
    guards: dict[str, Child] = {}
    try:
        if spec.driver == "qemu":
            for host in spec.host_ids:
                guard = spawn(f"guard-{host}", guard_args(spec, host), logs / f"guard-{host}.log")
                guards[host] = guard
                _wait_guard(spec, host, guard)
        scheduler = scheduler_args(nats.url, spec)
        children.append(
            spawn("scheduler", scheduler, logs / "scheduler.log", env=scheduler_env(spec))
        )
        for index, host in enumerate(spec.host_ids, start=1):
            children.append(spawn(host, agent_args(nats.url, spec, index), logs / f"{host}.log"))
    except (OSError, StratusError):
        everything = [*children, *guards.values()]
        procs.stop_all([child.process for child in everything], STOP_TIMEOUT_S)
        nats.stop()
        raise
    agents = {child.name: child for child in children[1:]}
    return LocalCluster(spec, nats, children[0], agents, guards)


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
        raise StratusError(
            f"hosts not up after {timeout_s:g}s; logs in {cluster.scheduler.log_path.parent}"
        )
    return hosts


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _say(text: str = "") -> None:
    print(text, flush=True)


def _section(title: str) -> None:
    _say()
    _say(f"== {title} ==")


def _clock() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S.%f")[:-3]


# --------------------------------------------------------------------------- stratus up

UP_HINTS = """try:  stratus vm create web-1 --size Small --wait
      stratus vm list
      stratus host list
Ctrl-C stops the cluster."""


def _up_port(requested: int | None) -> int:
    if requested is not None:
        if not port_is_free(requested):
            raise StratusError(f"port {requested} is already in use")
        return requested
    return DEFAULT_PORT if port_is_free(DEFAULT_PORT) else -1


def describe_cluster(cluster: LocalCluster) -> str:
    data = cluster.spec.data_dir
    rows = [("nats", cluster.url, f"store {data / 'nats'}")]
    scheduler = cluster.scheduler
    rows.append(("scheduler", f"pid {scheduler.process.pid}", f"log {scheduler.log_path}"))
    rows.append(("", "", f"db {data / 'scheduler.db'}"))
    for host, child in cluster.agents.items():
        rows.append((host, f"pid {child.process.pid}", f"log {child.log_path}"))
    rows.append(("audit", "", f"{data / 'agents'}/<host>/executions.jsonl"))
    return output.columns(rows, indent="  ")


def describe_http(spec: ClusterSpec) -> str:
    """Where the portal is and the token its mutations need (generated for this run)."""
    host, _, port = spec.http_listen.rpartition(":") if spec.http_listen else ("", "", "")
    url = f"http://{host or '127.0.0.1'}:{port}/"
    return output.columns(
        [
            ("portal", url, "HTTP API at /v1, OpenAPI at /openapi.json"),
            ("token", spec.api_token, ""),
        ],
        indent="  ",
    )


def _report_killed(names: list[str]) -> None:
    for name in names:
        _say(f"{name} did not stop within {STOP_TIMEOUT_S:g}s of SIGTERM; killed it")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stay_in_foreground(cluster: LocalCluster) -> None:
    """Report daemons that exit and restart fence guards, until Ctrl-C or SIGTERM."""
    while True:
        for host in cluster.keep_guards():
            _say(f"{_clock()}  fence guard of {host} exited; restarted it")
        for child in cluster.children:
            if not child.exit_reported and child.process.poll() is not None:
                child.exit_reported = True
                _say(f"{_clock()}  {child.describe_exit()}")
        time.sleep(0.5)


def run_up(args: argparse.Namespace) -> int:
    """``stratus up``: a local cluster in the foreground until Ctrl-C / SIGTERM."""
    if args.hosts < 1:
        raise StratusError("--hosts must be at least 1")
    port = _up_port(args.nats_port)
    spec = ClusterSpec(
        data_dir=Path(args.data_dir).resolve(),
        hosts=args.hosts,
        driver=args.driver,
        capacity=args.capacity,
        nats_port=port,
        log_level=args.log_level.upper(),
        agent_config=Path(args.agent_config).resolve() if args.agent_config else None,
        boot_dir=(
            qemukit.ensure_boot_kit(Path(args.data_dir).resolve() / "boot")
            if args.driver == "qemu"
            else None
        ),
        http_listen=args.http_listen,
        api_token=secrets.token_urlsafe(32) if args.http_listen else "",
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cluster = start_cluster(spec)
    try:
        _say(f"Stratus local cluster ({spec.hosts} hosts, {spec.driver} driver, {spec.capacity})")
        _say(describe_cluster(cluster))
        if spec.http_listen:
            _say(describe_http(spec))
        if cluster.nats.port != DEFAULT_PORT:
            _say(f"NATS is not on port {DEFAULT_PORT}; for the other commands run:")
            _say(f"  export STRATUS_NATS={cluster.url}")
        started_s = time.monotonic()
        hosts = asyncio.run(_wait_up(cluster, args.timeout_s or 30.0))
        _say(f"{len(hosts)} hosts up in {time.monotonic() - started_s:.1f}s")
        _say(output.host_table(hosts) + "\n\n" + UP_HINTS)
        _stay_in_foreground(cluster)
    except KeyboardInterrupt:
        _say()
        _say("stopping...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _report_killed(cluster.stop())
    _say("stopped")
    return 0


async def _wait_up(cluster: LocalCluster, timeout_s: float) -> list[m.HostInfo]:
    nc = await connect(cluster.url)
    try:
        return await wait_hosts_up(StratusClient(nc), cluster, timeout_s)
    finally:
        await nc.close()


# --------------------------------------------------------------------------- stratus demo


def demo_requests() -> list[m.CreateVm]:
    requests = []
    for size, count in DEMO_VMS:
        for index in range(1, count + 1):
            name = f"{size.lower()}-{index}"
            requests.append(m.CreateVm(name=name, size=size, request_id=f"demo-{name}"))
    return requests


def busiest_host(vms: Sequence[m.VmInfo]) -> str:
    """The host running the most VMs (the lowest id on a tie)."""
    counts = Counter(vm.host for vm in vms if vm.host and vm.state is m.VmState.RUNNING)
    if not counts:
        raise StratusError("no host runs a VM")
    return max(sorted(counts), key=lambda host: counts[host])


async def _all_running(
    client: StratusClient, cluster: LocalCluster, names: set[str], timeout_s: float
) -> list[m.VmInfo]:
    vms: list[m.VmInfo] = []

    async def all_running() -> list[m.VmInfo] | None:
        nonlocal vms
        cluster.check_scheduler()
        vms = [vm for vm in await client.list_vms() if vm.name in names]
        for vm in vms:
            if vm.state in (m.VmState.FAILED, m.VmState.DELETED):
                raise StratusError(f"vm '{vm.name}' is {vm.state}: {vm.reason}")
        running = len(vms) == len(names) and all(vm.state is m.VmState.RUNNING for vm in vms)
        return vms if running else None

    if await poll(all_running, timeout_s=timeout_s, interval_s=POLL_S) is None:
        raise StratusError(f"VMs not running after {timeout_s:g}s: {output.state_summary(vms)}")
    return vms


async def _place(client: StratusClient, cluster: LocalCluster, timeout_s: float) -> list[m.VmInfo]:
    requests = demo_requests()
    sizes = {size.name: size for size in await client.list_sizes()}
    total_milli = sum(sizes[request.size].cpu_milli for request in requests)
    total_mib = sum(sizes[request.size].mem_mib for request in requests)
    _section(f"2. Placing {len(requests)} VMs")
    _say(", ".join(f"{count} x {size}" for size, count in DEMO_VMS))
    _say(f"{output.cores(total_milli)} cores and {output.gib(total_mib)} GiB in all")
    started_s = time.monotonic()
    await asyncio.gather(*(client.create_vm(request) for request in requests))
    accepted_s = time.monotonic() - started_s
    vms = await _all_running(client, cluster, {request.name for request in requests}, timeout_s)
    elapsed_s = time.monotonic() - started_s
    rate = len(vms) / elapsed_s
    _say(f"accepted in {accepted_s:.2f}s, all running in {elapsed_s:.2f}s ({rate:.0f} VMs/s)")
    _say()
    _say(output.vm_table(vms))
    return vms


def _newly_recovered(
    vms: Sequence[m.VmInfo],
    moved: dict[str, m.VmInfo],
    done: dict[str, output.Recovery],
    at_s: float,
) -> list[output.Recovery]:
    fresh = []
    for vm in vms:
        old = moved.get(vm.name)
        if old is None or vm.name in done or vm.state is not m.VmState.RUNNING:
            continue
        if vm.host and vm.host != old.host:
            fresh.append(output.Recovery(vm.name, old.host or "-", vm.host, vm.generation, at_s))
    return fresh


async def _watch_recovery(
    client: StratusClient,
    cluster: LocalCluster,
    victim: str,
    moved: dict[str, m.VmInfo],
    timeout_s: float,
) -> tuple[list[output.Recovery], list[m.VmInfo], list[m.HostInfo]]:
    killed_s = time.monotonic()
    done: dict[str, output.Recovery] = {}
    down = False
    while True:
        cluster.check_scheduler()
        vms, hosts = await client.list_vms(), await client.list_hosts()
        at_s = time.monotonic() - killed_s
        if not down and any(h.host_id == victim and h.state is m.HostState.DOWN for h in hosts):
            down = True
            _say(f"  +{at_s:.2f}s  {victim} is down")
        for recovery in _newly_recovered(vms, moved, done, at_s):
            done[recovery.name] = recovery
            _say(f"  +{at_s:.2f}s  {recovery.name} running on {recovery.to_host}")
        if down and len(done) == len(moved) and all(vm.state is m.VmState.RUNNING for vm in vms):
            return sorted(done.values(), key=lambda r: r.name), vms, hosts
        if at_s > timeout_s:
            missing = sorted(set(moved) - set(done))
            raise StratusError(
                f"not recovered {timeout_s:g}s after the kill: {victim} down={down}, "
                f"waiting for {', '.join(missing) or 'the host'}; {output.state_summary(vms)}"
            )
        await asyncio.sleep(POLL_S)


async def _kill_and_recover(
    client: StratusClient, cluster: LocalCluster, vms: list[m.VmInfo], timeout_s: float
) -> None:
    victim = busiest_host(vms)
    moved = {vm.name: vm for vm in vms if vm.host == victim}
    agent = cluster.agents[victim]
    _section(f"3. Killing {victim}, the host with the most VMs ({len(moved)})")
    agent.process.kill()
    agent.exit_reported = True
    _say(f"{_clock()}  kill -9 {victim} (pid {agent.process.pid})")
    _say("waiting for the scheduler to declare it down (dead_after_s) and place its VMs again")
    recoveries, final_vms, hosts = await _watch_recovery(client, cluster, victim, moved, timeout_s)
    _section("4. Recovered")
    _say(output.recovery_report(recoveries))
    _say()
    _say(output.vm_table(final_vms))
    _say()
    _say(output.host_table(hosts))


async def _demo(cluster: LocalCluster, started_s: float, timeout_s: float) -> None:
    nc = await connect(cluster.url)
    try:
        client = StratusClient(nc)
        hosts = await wait_hosts_up(client, cluster, timeout_s)
        _say(f"{len(hosts)} hosts up in {time.monotonic() - started_s:.1f}s")
        _say()
        _say(output.host_table(hosts))
        vms = await _place(client, cluster, timeout_s)
        await _kill_and_recover(client, cluster, vms, timeout_s)
    finally:
        await nc.close()


def run_demo(args: argparse.Namespace) -> int:
    """``stratus demo``: a throw-away cluster, 12 VMs, one host killed, every VM recovered."""
    timeout_s = args.timeout_s or DEMO_TIMEOUT_S
    spec = ClusterSpec(data_dir=Path(tempfile.mkdtemp(prefix="stratus-demo-")))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _section(f"1. Starting a local cluster: nats-server, scheduler, {spec.hosts} host agents")
    started_s = time.monotonic()
    succeeded = False
    cluster = start_cluster(spec)
    try:
        _say(f"fake driver, {spec.capacity} per host, fault domains fd-1..fd-{spec.hosts}")
        _say(describe_cluster(cluster))
        asyncio.run(_demo(cluster, started_s, timeout_s))
        succeeded = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _section("5. Shutting down")
        _report_killed(cluster.stop())
        if succeeded and not args.keep:
            shutil.rmtree(spec.data_dir, ignore_errors=True)
        else:
            _say(f"logs and data kept in {spec.data_dir}")
    _say("done")
    return 0
