"""A pool of simulated hosts in one process (``stratus agent --simulate N``), for scale runs.

Each simulated host is a full :class:`~hostagent.state.AgentState` (the same command handling,
lease, fencing and heartbeat report as a real agent, behind the same
:class:`~hostagent.agent.Agent` shell) over a :class:`~hostagent.drivers.fake.FakeDriver` with
its own id, fault domain and resource accounts, and speaks the same wire protocol as a real
agent: the scheduler cannot tell the difference. What is shared is the plumbing, so that 10,000
hosts fit one process:

- one NATS connection; one wildcard subscription for every host's commands (dispatched by
  subject) and one for every heartbeat ack (the reply subject names the host);
- one heartbeat wheel: hosts are spread evenly over the interval, each due again one jittered
  interval after its last heartbeat, or soon after its inventory changed (coalesced, at most one
  per ``MIN_GAP_S``; at the next turn of the wheel when a migration's status changed), like the
  single agent's loop;
- one fence watchdog that looks only at leases that have run out (a heap by expiry);
- one set of driver operations in flight (no task per host);
- one execution log file for the pool (each line names its host), written a batch at a time
  (hostagent/execlog.py ``PooledExecLog``);
- each host has a simulated network backend (hostagent/netsim.py) and an underlay address of
  its own from 100.64.0.0/10.

A host can be made to go silent (a network partition: no heartbeats, commands dropped, and its
lease runs out so it fences) by a request on ``stratus.sim.silence`` whose body is the host id;
the pool that owns the host answers ``ok``.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import ipaddress
import logging
import random
import signal
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import msgspec
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from common import codec, subjects
from common.clock import Clock, SystemClock
from common.config import AgentConfig
from common.errors import ConfigError, ProtocolError
from common.ids import HostId, host_id
from common.messages import Heartbeat
from common.natsauth import auth_options, nats_servers
from common.resources import Resources, parse_capacity
from common.sizes import parse_size_mib
from hostagent.agent import FENCE_CHECK_S, Agent, Operations
from hostagent.drivers.fake import FakeDriver, fake_migration_model
from hostagent.drivers.fakequorum import DiskLedger
from hostagent.execlog import PooledExecLog
from hostagent.heartbeat import JITTER, MIN_GAP_S
from hostagent.lease import Lease
from hostagent.netsim import SimulatedNetwork
from hostagent.replicasim import SIMULATED_PORT, SimulatedReplicas
from hostagent.state import AgentState
from hostagent.stimuli import AckReceived, AdoptCpuOvercommit, ClaimRefused, TimingAdopted

log = logging.getLogger(__name__)

WHEEL_TICK_S = 0.01
"""The heartbeat wheel turns this often."""
SIM_UNDERLAY = int(ipaddress.IPv4Address("100.64.0.0"))
"""Simulated hosts report underlay addresses from 100.64.0.0/10 (shared address space), one
each, so that the scheduler's peer lists are as long as a real cluster's; nothing is sent
there."""


def sim_underlay_ip(index: int) -> str:
    return str(ipaddress.IPv4Address(SIM_UNDERLAY + index + 1))


ACK_INBOX_PREFIX = "_INBOX.simpool"


@dataclass(frozen=True)
class PoolSettings:
    config: AgentConfig
    count: int
    prefix: str
    capacity: Resources
    fault_domains: int = 3

    def host_ids(self) -> list[HostId]:
        return [host_id(f"{self.prefix}-{i:05d}") for i in range(1, self.count + 1)]


@dataclass(eq=False)
class SimHost:
    index: int
    agent: Agent
    driver: FakeDriver
    subject: str
    last_sent_s: float = float("-inf")
    next_due_s: float = 0.0
    silent: bool = False


class SimPool:
    def __init__(self, settings: PoolSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.heartbeat_interval_s = settings.config.heartbeat_interval_s
        self.fence_after_s = settings.config.fence_after_s
        self.hosts: dict[str, SimHost] = {}
        self._by_index: list[SimHost] = []
        self._due: list[tuple[float, int]] = []
        self._expiring: list[tuple[float, int]] = []
        self._dirty: set[int] = set()
        self._urgent: set[int] = set()
        """Hosts whose migration news goes at the next turn of the wheel."""
        self._rng = random.Random()
        self._operations = Operations()
        self._inbox = f"{ACK_INBOX_PREFIX}.{uuid.uuid4().hex[:12]}"
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.ledger = DiskLedger()
        """The write counts of every simulated disk copy (a chaos observer checks that a VM
        never starts again from a copy behind its last acknowledged write)."""
        self.refused: dict[str, str] = {}
        """Hosts refused their id (another live agent holds it), and why."""

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ building hosts

    def _build(self, execlog: PooledExecLog) -> None:
        config, settings = self.settings.config, self.settings
        boot_id = uuid.uuid4().hex
        start_s = self.clock.monotonic_s()
        for index, hid in enumerate(settings.host_ids()):
            driver = FakeDriver(
                settings.capacity,
                cpu_overcommit=config.cpu_overcommit or 1.0,
                start_delay_s=config.fake_start_delay_s,
                migration=fake_migration_model(config),
                ledger=self.ledger,
                join_mib_s=config.fake_replica_fill_mib_s,
            )
            network = SimulatedNetwork()
            driver.has_network = network.has_network
            template = Heartbeat(
                host_id=hid,
                seq=0,
                boot_id=f"{boot_id}-{index}",
                capacity=settings.capacity,
                region=config.region,
                fault_domain=f"fd-{index % settings.fault_domains}",
                labels=dict(config.labels),
                cpu_overcommit=config.cpu_overcommit,
                driver=driver.name,
                underlay_ip=sim_underlay_ip(index),
                replica_port=SIMULATED_PORT,
                disk_capacity_mib=parse_size_mib(config.disk_capacity)
                if config.disk_capacity
                else 0,
            )
            state = AgentState(
                template,
                heartbeat_interval_s=config.heartbeat_interval_s,
                fence_after_s=config.fence_after_s,
            )
            replicas = SimulatedReplicas(
                self.clock.monotonic_s, config.fake_replica_fill_mib_s, ledger=self.ledger,
                host_id=hid,
            )  # fmt: skip
            agent = Agent(
                state, driver, execlog.host(hid), self.clock, self._operations, network, replicas
            )
            agent.on_change = partial(self._dirty.add, index)
            agent.on_report_now = partial(self._urgent.add, index)
            agent.on_lease = partial(self._lease_renewed, index)
            host = SimHost(index, agent, driver, subjects.host_heartbeat(hid))
            host.next_due_s = start_s + self.heartbeat_interval_s * index / settings.count
            self.hosts[hid] = host
            self._by_index.append(host)
            self._due.append((host.next_due_s, index))
        heapq.heapify(self._due)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(self._serve(), name="serve")
                await self._stop.wait()
                serving.cancel()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("simulated pool stopped hosts=%d", self.settings.count)

    async def _serve(self) -> None:
        config = self.settings.config
        path = Path(config.data_dir) / f"{self.settings.prefix}-pool" / "executions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            execlog = stack.enter_context(closing(PooledExecLog(path)))
            self._build(execlog)
            stack.enter_context(_long_lived_heap())
            nc = await self._connect()
            stack.push_async_callback(_close, nc)
            await nc.subscribe(f"{subjects.ROOT}.host.*.cmd", cb=self._on_commands)
            await nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
            await nc.subscribe(subjects.SIM_SILENCE, cb=self._on_silence)
            await nc.flush()
            log.info(
                "simulated pool serving hosts=%d prefix=%s capacity=%s",
                self.settings.count,
                self.settings.prefix,
                self.settings.capacity,
            )
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._operations.run(), name="operations")
                tg.create_task(self._run_wheel(nc, execlog), name="heartbeat-wheel")
                tg.create_task(self._run_watchdog(), name="fence-watchdog")

    async def _connect(self) -> Client:
        async def on_error(exc: Exception) -> None:
            log.debug("nats error error=%r", exc)

        config = self.settings.config
        return await nats.connect(
            nats_servers(config.nats_url),
            name=f"stratus-simpool-{self.settings.prefix}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            pending_size=256 * 1024 * 1024,
            error_cb=on_error,
            **auth_options(config.nats_creds, config.nats_nkey_seed, config.nats_tls_ca),
        )

    # ------------------------------------------------------------------ commands and control

    async def _on_commands(self, msg: Msg) -> None:
        host = self.hosts.get(subjects.host_of_heartbeat(msg.subject))
        if host is None or host.silent:
            return
        await host.agent.on_commands(msg)

    async def _on_silence(self, msg: Msg) -> None:
        host = self.hosts.get(msg.data.decode(errors="replace").strip())
        if host is None:
            return
        host.silent = True
        log.warning("simulated host silenced host_id=%s", host.agent.host_id)
        if msg.reply:
            await msg.respond(b"ok")

    # ------------------------------------------------------------------ heartbeats

    async def _run_wheel(self, nc: Client, execlog: PooledExecLog) -> None:
        while True:
            now_s = self.clock.monotonic_s()
            execlog.flush()
            for host in self._due_hosts(now_s):
                await self._send(nc, host, now_s, execlog)
            await asyncio.sleep(WHEEL_TICK_S)

    def _due_hosts(self, now_s: float) -> list[SimHost]:
        """Hosts whose interval ran out, changed hosts past their minimum gap, and hosts with
        migration news."""
        due: dict[int, SimHost] = {}
        while self._due and self._due[0][0] <= now_s:
            due_s, index = heapq.heappop(self._due)
            host = self._by_index[index]
            if host.next_due_s == due_s:
                due[index] = host
        for index in list(self._dirty):
            host = self._by_index[index]
            if host.last_sent_s + MIN_GAP_S <= now_s:
                self._dirty.discard(index)
                due[index] = host
        for index in self._urgent:
            due[index] = self._by_index[index]
        self._urgent.clear()
        return [host for host in due.values() if not host.silent]

    async def _send(self, nc: Client, host: SimHost, now_s: float, execlog: PooledExecLog) -> None:
        self._dirty.discard(host.index)
        host.last_sent_s = now_s
        jitter = self._rng.uniform(1 - JITTER, 1 + JITTER)
        host.next_due_s = now_s + host.agent.state.heartbeat_interval_s * jitter
        heapq.heappush(self._due, (host.next_due_s, host.index))
        heartbeat: Heartbeat = host.agent.next_heartbeat()
        execlog.flush()  # what it reports is in the audit log before it leaves
        try:
            await nc.publish(
                host.subject, codec.encode(heartbeat), reply=f"{self._inbox}.{host.index}"
            )
        except nats.errors.Error as exc:
            log.debug("heartbeat not sent host_id=%s error=%r", host.agent.host_id, exc)

    async def _on_ack(self, msg: Msg) -> None:
        if not msg.data:
            return  # a "no responders" status: no scheduler is listening, like a request timeout
        try:
            host = self._by_index[int(msg.subject.rsplit(".", 1)[1])]
            ack = codec.heartbeat_ack.decode(msg.data)
        except (ValueError, IndexError, msgspec.DecodeError) as exc:
            log.warning("malformed heartbeat ack subject=%s error=%s", msg.subject, exc)
            return
        if host.silent:
            return
        for instruction in host.agent.handle(AckReceived(ack)):
            match instruction:
                case TimingAdopted(heartbeat_interval_s=interval_s, fence_after_s=fence_after_s):
                    self._adopted(interval_s, fence_after_s)
                case AdoptCpuOvercommit(ratio=ratio):
                    if self.settings.config.cpu_overcommit is None:
                        host.driver.cpu_overcommit = ratio
                case ClaimRefused(reason=reason):
                    self._retire(host, reason)
                case _:
                    log.error("instruction not carried out instruction=%r", instruction)

    def _retire(self, host: SimHost, reason: str) -> None:
        """Another live agent holds this host's id: the host goes silent for good (it has
        executed nothing); a pool with no host left stops, as a refused agent exits."""
        host.silent = True
        self.refused[host.agent.host_id] = reason
        log.error("host id refused, host retired host_id=%s reason=%s", host.agent.host_id, reason)
        if len(self.refused) == len(self.hosts):
            self.request_stop()

    def _adopted(self, interval_s: float, fence_after_s: float) -> None:
        """One log line for the pool when its hosts adopt the scheduler's timing."""
        if (interval_s, fence_after_s) != (self.heartbeat_interval_s, self.fence_after_s):
            log.info(
                "timing adopted from scheduler heartbeat_interval_s=%g fence_after_s=%g",
                interval_s,
                fence_after_s,
            )
            self.heartbeat_interval_s, self.fence_after_s = interval_s, fence_after_s

    def _lease_renewed(self, index: int, lease: Lease) -> None:
        heapq.heappush(self._expiring, (lease.expires_at_s, index))

    # ------------------------------------------------------------------ fencing

    async def _run_watchdog(self) -> None:
        """Fence each host whose lease ran out (checked every FENCE_CHECK_S, like an agent)."""
        while True:
            now_s = self.clock.monotonic_s()
            while self._expiring and self._expiring[0][0] <= now_s:
                _, index = heapq.heappop(self._expiring)
                self._by_index[index].agent.check_lease()
            await asyncio.sleep(FENCE_CHECK_S)


POOL_GC_THRESHOLDS = (20_000, 20, 100)
"""A pool holds a few objects per VM for every VM of thousands of hosts, and allocates fast:
with Python's default thresholds (700, 10, 10) its collections kept looking at them."""


@contextmanager
def _long_lived_heap() -> Iterator[None]:
    """The hosts just built live as long as the pool: the collector leaves them out (frozen) and
    runs less often while the pool serves; both are undone when it stops."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*POOL_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _close(nc: Client) -> None:
    try:
        await nc.drain()
    except (nats.errors.Error, TimeoutError):
        await nc.close()


DEFAULT_SIM_CAPACITY = "64c/256g"


def resolve_pool_settings(
    config: AgentConfig, count: int, prefix: str, fault_domains: int
) -> PoolSettings:
    """Check the pool's flags; raise ConfigError when they cannot describe a pool."""
    if count < 1:
        raise ConfigError(f"--simulate needs at least 1 host, not {count}")
    if fault_domains < 1:
        raise ConfigError(f"--simulate-fault-domains needs at least 1, not {fault_domains}")
    if config.driver != "fake":
        raise ConfigError("simulated hosts use the fake driver")
    try:
        host_id(f"{prefix}-{count:05d}")
    except ProtocolError as exc:
        raise ConfigError(f"bad --simulate-prefix {prefix!r}: {exc}") from exc
    capacity = parse_capacity(config.capacity or DEFAULT_SIM_CAPACITY)
    return PoolSettings(config, count, prefix, capacity, fault_domains)
