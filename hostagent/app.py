"""AgentApp: the NATS connection, the agent's loops under one TaskGroup, signals and shutdown.

The agent registers simply by heartbeating. A loop that dies takes the process down (non-zero
exit, the supervisor restarts it); SIGTERM/SIGINT stop the loops, drain the connection and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client

from common import subjects
from common.clock import SystemClock
from common.config import AgentConfig
from common.errors import ConfigError, ProtocolError
from common.ids import HostId, host_id
from common.messages import Heartbeat
from common.natsauth import auth_options, host_inbox_prefix, nats_servers, redact_url
from common.resources import Resources
from hostagent.agent import Agent
from hostagent.capture import Capturer
from hostagent.console import ConsoleRelay
from hostagent.drivers.base import ConsoleDriver, HypervisorDriver
from hostagent.drivers.fake import FakeDriver, fake_migration_model
from hostagent.drivers.fakeledger import FileLedger
from hostagent.drivers.qemu import QemuDriver
from hostagent.execlog import ExecLog, execlog_path
from hostagent.fencing import FenceGuardKeeper
from hostagent.heartbeat import HeartbeatLoop
from hostagent.inventory import host_capacity
from hostagent.netlinux import (
    LinuxNetworks,
    check_host_tools,
    network_dir,
    uses_kernel_networks,
)
from hostagent.netsim import SimulatedNetwork
from hostagent.network import NetworkBackend
from hostagent.qemusetup import check_host, open_qemu_driver, qemu_root
from hostagent.replicas import ReplicaBackend, disk_capacity_mib
from hostagent.replicaserver import ReplicaServer
from hostagent.replicasim import SimulatedReplicas
from hostagent.state import AgentState

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.25
DRAIN_TIMEOUT_S = 2


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent needs, validated before any I/O starts."""

    config: AgentConfig
    host_id: HostId
    capacity: Resources
    disk_capacity_mib: int = 0


def resolve_settings(config: AgentConfig) -> AgentSettings:
    """Fill in the host id and the capacity; raise ConfigError when either is invalid."""
    raw_id = config.host_id or socket.gethostname().split(".")[0]
    try:
        checked_id = host_id(raw_id)
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    capacity = host_capacity(config.capacity, config.reserved)
    disk_mib = disk_capacity_mib(config.disk_capacity, Path(config.data_dir))
    if config.driver == "qemu":
        check_host(config)
    if uses_kernel_networks(config):
        check_host_tools()
    return AgentSettings(config, checked_id, capacity, disk_mib)


def make_driver(settings: AgentSettings) -> HypervisorDriver:
    config = settings.config
    match config.driver:
        case "fake":
            return FakeDriver(
                settings.capacity,
                cpu_overcommit=config.cpu_overcommit or 1.0,
                start_delay_s=config.fake_start_delay_s,
                migration=fake_migration_model(config),
                ledger=FileLedger(root=Path(config.data_dir), host_id=settings.host_id),
            )
        case "qemu":
            raise ConfigError("the qemu driver needs NATS and I/O: use open_driver()")


async def open_network_backend(settings: AgentSettings) -> NetworkBackend:
    """The host's guest networking: bridges, VXLAN, DHCP and nftables in the kernel for the qemu
    driver (hostagent/netlinux.py), else the simulated backend (honest accounts, nothing built
    in the kernel), also for the one-machine local cluster (``uses_kernel_networks``)."""
    config = settings.config
    if uses_kernel_networks(config):
        return LinuxNetworks(network_dir(config, settings.host_id), config.underlay_ip)
    return SimulatedNetwork()


async def open_driver(settings: AgentSettings, nc: Client | None) -> HypervisorDriver:
    """The configured driver, ready: a qemu driver has chosen its accelerator and re-adopted
    the VMs a previous agent left running."""
    if settings.config.driver == "qemu":
        return await open_qemu_driver(settings.config, settings.host_id, settings.capacity, nc)
    return make_driver(settings)


async def open_replicas(
    settings: AgentSettings, driver: HypervisorDriver, clock: SystemClock
) -> ReplicaBackend:
    """The host's replica server: a ``qemu-storage-daemon`` for the qemu driver (adopted if one
    runs), on the underlay address (loopback without one); else the simulated backend, which
    keeps its copies in the fake driver's ledger (hostagent/drivers/fakeledger.py)."""
    config = settings.config
    if isinstance(driver, QemuDriver):
        server = ReplicaServer(
            driver.root.parent / "replicas",  # beside the driver's root, <data_dir>/<host_id>
            config.underlay_ip or "127.0.0.1",
            config.replica_port,
            driver.disks.images,
        )
        await server.open()
        return server
    ledger = driver.ledger if isinstance(driver, FakeDriver) else None
    return SimulatedReplicas(
        clock.monotonic_s,
        fill_mib_s=config.fake_replica_fill_mib_s,
        ledger=ledger,
        host_id=settings.host_id,
    )


def _adopt_overcommit(
    driver: HypervisorDriver, config: AgentConfig
) -> Callable[[float], None] | None:
    """A fake host that declared no overcommit ratio keeps the scheduler's, so both keep the
    same accounts; a declared ratio always wins."""
    if config.cpu_overcommit is not None or not isinstance(driver, FakeDriver):
        return None

    def adopt(ratio: float) -> None:
        driver.cpu_overcommit = ratio

    return adopt


class AgentApp:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self.refused = ""
        """Why the scheduler refused this agent its host id (another live agent holds it);
        set when the agent stops for that reason (``__main__`` then exits non-zero)."""

    def request_stop(self) -> None:
        self._stop.set()

    def _refused(self, reason: str) -> None:
        """Another live agent holds this host id: stop, having executed nothing."""
        if not self.refused:
            host = self.settings.host_id
            log.error("host id refused, exiting host_id=%s reason=%s", host, reason)
        self.refused = reason
        self.request_stop()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; raise if a loop dies."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            async with asyncio.TaskGroup() as tg:
                serving = tg.create_task(self._serve(), name="serve")
                await self._stop.wait()
                log.info("agent stopping host_id=%s", self.settings.host_id)
                serving.cancel()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("agent stopped host_id=%s", self.settings.host_id)

    async def _serve(self) -> None:
        settings, config = self.settings, self.settings.config
        clock = SystemClock()
        async with AsyncExitStack() as stack:
            nc = await self._connect()
            stack.push_async_callback(_drain, nc)
            network = await open_network_backend(settings)
            stack.push_async_callback(network.close)  # kernel objects stay for running guests
            driver = await open_driver(settings, nc)
            stack.push_async_callback(driver.close)  # a real driver leaves its VMs running
            if isinstance(driver, FakeDriver):
                driver.has_network = network.has_network
            replicas = await open_replicas(settings, driver, clock)
            stack.push_async_callback(replicas.close)  # a server's exports stay for the VMs
            execlog = ExecLog(execlog_path(config.data_dir, settings.host_id), settings.host_id)
            stack.callback(execlog.close)
            state = AgentState(
                self._heartbeat_template(driver.name, replicas.port),
                heartbeat_interval_s=config.heartbeat_interval_s,
                fence_after_s=config.fence_after_s,
            )
            agent = Agent(state, driver, execlog, clock, network=network, replicas=replicas)
            guard: FenceGuardKeeper | None = None
            if isinstance(driver, QemuDriver):
                driver.on_change = agent.changed.set
                guard = FenceGuardKeeper(agent, config.data_dir, clock)
                await guard.ensure()  # its VMs outlive the agent: fenced even when it is dead
            capturer = Capturer(nc, settings.host_id, driver, qemu_root(config, settings.host_id))
            if isinstance(replicas, ReplicaServer):
                capturer.replica_file = replicas.made_file
            agent.capture = lambda command, running: capturer.capture(command, running=running)
            await nc.subscribe(subjects.host_commands(settings.host_id), cb=agent.on_commands)
            consoles = None
            if isinstance(driver, ConsoleDriver):
                consoles = ConsoleRelay(nc, settings.host_id, driver, driver.inventory)
                await consoles.subscribe()
            heartbeats = HeartbeatLoop(
                nc,
                agent,
                clock=clock,
                on_cpu_overcommit=_adopt_overcommit(driver, config),
                on_refused=self._refused,
            )
            log.info(
                "agent serving host_id=%s capacity=%s driver=%s network=%s underlay_ip=%s",
                settings.host_id,
                settings.capacity,
                driver.name,
                network.name,
                config.underlay_ip or "-",
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(heartbeats.run(), name="heartbeat")
                tg.create_task(agent.operations.run(), name="operations")
                tg.create_task(agent.run_fence_watchdog(), name="fence-watchdog")
                if guard is not None:
                    tg.create_task(guard.run(), name="fence-guard-keeper")
                if consoles is not None:
                    tg.create_task(consoles.run(), name="consoles")
                if isinstance(network, LinuxNetworks):
                    tg.create_task(network.run_selfcheck(), name="network-selfcheck")
                if isinstance(replicas, ReplicaServer):
                    tg.create_task(replicas.run(), name="replica-server")

    def _heartbeat_template(self, driver_name: str, replica_port: int) -> Heartbeat:
        config = self.settings.config
        return Heartbeat(
            host_id=self.settings.host_id,
            seq=0,
            boot_id=uuid.uuid4().hex,
            capacity=self.settings.capacity,
            region=config.region,
            fault_domain=config.fault_domain,
            labels=dict(config.labels),
            cpu_overcommit=config.cpu_overcommit,
            driver=driver_name,
            underlay_ip=config.underlay_ip,
            disk_capacity_mib=self.settings.disk_capacity_mib,
            replica_port=replica_port,
        )

    async def _connect(self) -> Client:
        """Connect, retrying until a server answers; afterwards reconnect forever."""
        host = self.settings.host_id
        config = self.settings.config

        async def on_error(exc: Exception) -> None:
            log.debug("nats error host_id=%s error=%r", host, exc)

        async def on_disconnected() -> None:
            if not self._stop.is_set():
                log.warning("nats disconnected host_id=%s", host)

        async def on_reconnected() -> None:
            log.info("nats reconnected host_id=%s", host)

        nc = await nats.connect(
            nats_servers(self.settings.config.nats_url),
            name=f"stratus-agent-{host}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,
            connect_timeout=2,
            drain_timeout=DRAIN_TIMEOUT_S,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            inbox_prefix=host_inbox_prefix(host),
            **auth_options(config.nats_creds, config.nats_nkey_seed, config.nats_tls_ca),
        )
        url = redact_url(self.settings.config.nats_url)
        log.info("nats connected host_id=%s url=%s", host, url)
        return nc


async def _drain(nc: Client) -> None:
    try:
        await nc.drain()
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("nats drain failed error=%r", exc)
        await nc.close()
