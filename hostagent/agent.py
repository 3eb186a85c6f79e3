"""The host agent's shell around :class:`hostagent.state.AgentState`: the I/O it decides.
Not pure (asyncio, the driver, the execution log); the decisions are all in the state.

Every input (commands from NATS, a finished driver operation, the watchdog's look at the lease,
a heartbeat due, an ack) goes to ``AgentState.handle``; the instructions that come back are
carried out here: driver calls run as asyncio tasks (so different VMs proceed concurrently,
and a pause never waits for a slow boot) and report back as :class:`OpDone`; executions are
logged; the lease is published. What goes out on the network (heartbeats) is returned to the
caller: the single agent's heartbeat loop or the simulated pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from typing import assert_never

import msgspec
from nats.aio.msg import Msg

from common import codec
from common.clock import Clock
from common.errors import DriverError, NetworkError
from common.messages import AgentCommand, CaptureDisk, Heartbeat, ObservedVm
from common.network_messages import UpdateNetworks
from common.replica_messages import UpdateReplicas
from hostagent.drivers.base import (
    HypervisorDriver,
    IncomingEndpoint,
    MigratingDriver,
    ReplicatingDriver,
)
from hostagent.execlog import ExecLog
from hostagent.lease import Lease
from hostagent.netsim import SimulatedNetwork
from hostagent.network import NetworkBackend
from hostagent.replicas import ReplicaBackend, ReplicaError
from hostagent.replicasim import SimulatedReplicas
from hostagent.state import AgentState
from hostagent.stimuli import (
    AdmitHeld,
    ApplyNetworks,
    ApplyReplicas,
    CommandsReceived,
    DriverCall,
    DriverCancelMigration,
    DriverDestroy,
    DriverFinishIncoming,
    DriverForget,
    DriverMigrateOut,
    DriverPause,
    DriverPrepareIncoming,
    DriverResume,
    DriverSetReplicas,
    DriverStart,
    DriverStop,
    Endpoint,
    FenceTick,
    HeartbeatDue,
    Instruction,
    LeaseRenewed,
    MigrationCall,
    NetworksApplied,
    Note,
    OpDone,
    Progress,
    RecordExecution,
    ReplicasApplied,
    ReportChanged,
    ReportNow,
    RunCapture,
    SendHeartbeat,
    Stimulus,
)

log = logging.getLogger(__name__)

FENCE_CHECK_S = 0.05
"""The watchdog looks at the lease this often (the spec asks for at least every 100 ms)."""


async def drive(driver: HypervisorDriver, op: DriverCall) -> OpDone:
    """Carry out one driver call; its result (``DriverError`` included) as a stimulus."""
    endpoint = None
    try:
        match op:
            case DriverStart(spec=spec, generation=generation):
                await driver.start(spec, generation)
            case DriverStop(name=name):
                await driver.stop(name)
            case DriverDestroy(name=name):
                await driver.destroy(name)
            case DriverForget(name=name, generation=generation):
                await driver.forget(name, generation)
            case DriverPause(name=name):
                await driver.pause(name)
            case DriverResume(name=name):
                await driver.resume(name)
            case DriverSetReplicas(command=command):
                if not isinstance(driver, ReplicatingDriver):
                    raise DriverError(
                        f"driver {driver.name} has no replicated disks", retryable=False
                    )
                await driver.set_disk_replicas(command)
            case (
                DriverPrepareIncoming()
                | DriverMigrateOut()
                | DriverCancelMigration()
                | DriverFinishIncoming()
            ):
                endpoint = await _migrate(driver, op)
            case _:
                assert_never(op)
    except DriverError as exc:
        return OpDone(op, driver.inventory(), str(exc), exc.retryable)
    return OpDone(op, driver.inventory(), endpoint=endpoint)


async def _migrate(driver: HypervisorDriver, op: MigrationCall) -> Endpoint | None:
    """Carry out one migration call; a driver that cannot migrate fails it."""
    if not isinstance(driver, MigratingDriver):
        raise DriverError(f"driver {driver.name} cannot migrate", retryable=False)
    match op:
        case DriverPrepareIncoming(spec=spec, generation=generation, listen_address=address):
            ready = await driver.prepare_incoming(spec, generation, address)
            return Endpoint(ready.address, ready.migration_port, ready.nbd_port)
        case DriverMigrateOut(command=command):
            target = IncomingEndpoint(command.address, command.migration_port, command.nbd_port)
            await driver.migrate_out(
                command.name,
                target,
                max_downtime_ms=command.max_downtime_ms,
                max_bandwidth_mib_s=command.max_bandwidth_mib_s,
            )
        case DriverCancelMigration(name=name):
            await driver.cancel_migration(name)
        case DriverFinishIncoming(name=name):
            await driver.finish_incoming(name)
        case _:
            assert_never(op)
    return None


def migration_progress(driver: HypervisorDriver, names: Collection[str]) -> dict[str, Progress]:
    """The progress of the outgoing migrations of ``names`` (for a heartbeat). Most heartbeats
    have none: they skip the check of the driver's kind (a Protocol's isinstance is costly)."""
    if not names or not isinstance(driver, MigratingDriver):
        return {}
    progress = {}
    for name in names:
        seen = driver.migration_progress(name)
        if seen is not None:
            progress[name] = Progress(seen.transferred_mib, seen.total_mib)
    return progress


class Operations:
    """The driver operations in flight, as asyncio tasks; shared by the agents of a process.

    :meth:`run` stands for them under the app's TaskGroup: an operation that crashes (a bug:
    ``DriverError`` is a result, not a crash) takes the process down, as any dying loop does.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._crash: BaseException | None = None
        self._crashed = asyncio.Event()

    def spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._crash is None:
            self._crash = exc
            self._crashed.set()

    def idle(self) -> bool:
        return not self._tasks

    async def settled(self) -> None:
        """Return once no operation is in flight (raise the first that crashed)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._crash is not None:
            raise self._crash

    async def run(self) -> None:
        try:
            await self._crashed.wait()
            assert self._crash is not None
            raise self._crash
        finally:  # on the way out, as a TaskGroup would: cancel them and wait for them
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def apply_networks(
    network: NetworkBackend, op: ApplyNetworks, vms: Callable[[], list[ObservedVm]]
) -> NetworksApplied:
    """Have the backend apply a configuration; its result (``NetworkError`` included) as a
    stimulus."""
    config, error = op.config, None
    try:
        if isinstance(config, UpdateNetworks):
            await network.update(config)
        else:
            await network.apply(config)
    except NetworkError as exc:
        error = str(exc)
    if isinstance(config, UpdateNetworks):
        named = op.known | {n.vni for n in config.added}
    else:
        named = frozenset(n.vni for n in config.networks)
    vnis = frozenset(vni for vni in named if network.has_network(vni))
    return NetworksApplied(config, vnis, network.applied_digest, vms(), error)


async def apply_replicas(replicas: ReplicaBackend, op: ApplyReplicas) -> ReplicasApplied:
    """Have the backend hold a set of replicas; its result (``ReplicaError`` included) as a
    stimulus."""
    error = None
    try:
        if isinstance(op.config, UpdateReplicas):
            await replicas.update(op.config)
        else:
            await replicas.apply(op.config)
    except ReplicaError as exc:
        error = str(exc)
    return ReplicasApplied(op.config, replicas.applied_digest, error)


def _log(note: Note) -> None:
    if log.isEnabledFor(note.level):
        log.log(note.level, note.event, *note.args)


class Agent:
    def __init__(
        self,
        state: AgentState,
        driver: HypervisorDriver,
        execlog: ExecLog,
        clock: Clock,
        operations: Operations | None = None,
        network: NetworkBackend | None = None,
        replicas: ReplicaBackend | None = None,
    ) -> None:
        self.state = state
        self.host_id = state.host_id
        self.driver = driver
        self.network: NetworkBackend = network or SimulatedNetwork()
        """The host's guest networking (simulated unless the app opened another)."""
        self.replicas: ReplicaBackend = replicas or SimulatedReplicas(clock.monotonic_s)
        """The disk replicas the host serves (simulated unless the app opened a server)."""
        self._execlog = execlog
        self._clock = clock
        self.operations = operations or Operations()
        self.changed = asyncio.Event()
        """Set whenever the report (inventory, fenced flag) changes; the heartbeat loop clears
        it."""
        self.on_change: Callable[[], None] = self.changed.set
        self.urgent = asyncio.Event()
        """A migration's status changed since the last heartbeat: the next one goes at once
        (an Event, so that a heartbeat loop waiting out its coalescing gap wakes for it)."""
        self.on_report_now: Callable[[], None] = self._report_now
        self.capture: Callable[[CaptureDisk, bool], Awaitable[None]] | None = None
        """Carries out CaptureDisk (set by the app when the driver keeps disks)."""
        self.on_lease: Callable[[Lease], None] | None = None
        """Told of every renewal (the app publishes the lease to the host's fence guard)."""

    @property
    def lease(self) -> Lease:
        return self.state.lease

    @property
    def fenced(self) -> bool:
        return self.state.fenced

    def inventory(self) -> list[ObservedVm]:
        """Every VM held: the driver's, plus failed starts kept until the scheduler clears them."""
        return self.state.inventory(self.driver.inventory())

    # ------------------------------------------------------------------ the state machine

    def handle(self, stimulus: Stimulus) -> list[Instruction]:
        """Feed the state; carry out what concerns this host; return what is the caller's to
        send or do (heartbeats, adopted timing and overcommit, a refused host id)."""
        rest: list[Instruction] = []
        for instruction in self.state.handle(stimulus, self._clock.monotonic_s()):
            match instruction:
                case RecordExecution(vm=vm, generation=generation, event=event):
                    self._execlog.record(vm, generation, event)
                    self.on_change()
                case ReportChanged():
                    self.on_change()
                case ReportNow():
                    self.on_report_now()
                case LeaseRenewed(lease=lease):
                    if self.on_lease is not None:
                        self.on_lease(lease)
                case Note():
                    _log(instruction)
                case AdmitHeld(commands=commands):
                    self.submit(commands)
                case RunCapture():
                    self.operations.spawn(self._capture(instruction), f"capture-{instruction.name}")
                case ApplyNetworks() | ApplyReplicas():
                    self.operations.spawn(self._apply(instruction), "host-config")
                case (
                    DriverStart()
                    | DriverStop()
                    | DriverDestroy()
                    | DriverForget()
                    | DriverPause()
                    | DriverResume()
                    | DriverSetReplicas()
                    | DriverPrepareIncoming()
                    | DriverMigrateOut()
                    | DriverCancelMigration()
                    | DriverFinishIncoming()
                ):
                    self.operations.spawn(self._drive(instruction), f"vm-{instruction.name}")
                case _:
                    rest.append(instruction)
        return rest

    def _report_now(self) -> None:
        self.urgent.set()
        self.on_change()

    async def _drive(self, op: DriverCall) -> None:
        self.handle(await drive(self.driver, op))

    async def _apply(self, op: ApplyNetworks | ApplyReplicas) -> None:
        """Have the host's networks or replicas made as the scheduler wants them."""
        if isinstance(op, ApplyNetworks):
            self.handle(await apply_networks(self.network, op, self.driver.inventory))
        else:
            self.handle(await apply_replicas(self.replicas, op))

    async def _capture(self, op: RunCapture) -> None:
        if self.capture is None:
            log.error("capture unsupported vm=%s image=%s", op.name, op.command.image)
        else:
            await self.capture(op.command, op.held)
        self.handle(OpDone(op, self.driver.inventory()))

    def next_heartbeat(self) -> Heartbeat:
        """The next report (the caller sends it and hands its ack to :meth:`handle`)."""
        self.urgent.clear()
        progress = migration_progress(self.driver, self.state.mig.outgoing)
        due = HeartbeatDue(self.driver.inventory(), progress, self.replicas.statuses())
        for instruction in self.handle(due):
            if isinstance(instruction, SendHeartbeat):
                return instruction.heartbeat
        raise AssertionError("a heartbeat due yields a heartbeat")

    # ------------------------------------------------------------------ fencing

    def check_lease(self) -> None:
        """Without a valid lease, have every executing VM paused (paused, never destroyed)."""
        if self.state.lease.expired(self._clock.monotonic_s()):
            self.handle(FenceTick(self.driver.inventory()))

    async def enforce_lease(self) -> None:
        """:meth:`check_lease`, then wait for the driver (for tests)."""
        self.check_lease()
        await self.operations.settled()

    async def run_fence_watchdog(self) -> None:
        while True:
            self.check_lease()
            await asyncio.sleep(FENCE_CHECK_S)

    # ------------------------------------------------------------------ commands

    async def on_commands(self, msg: Msg) -> None:
        """Subscription callback: decode, check the host id, hand over. Never raises on bad
        input."""
        try:
            batch = codec.host_commands.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("malformed commands dropped subject=%s error=%s", msg.subject, exc)
            return
        if batch.host_id != self.host_id:
            log.warning(
                "commands for another host dropped subject=%s host_id=%s",
                msg.subject,
                batch.host_id,
            )
            return
        self.submit(batch.commands, epoch=batch.epoch)

    def submit(self, commands: Sequence[AgentCommand], *, epoch: int = 0) -> None:
        """Commands as they arrive: judged now (their leader's epoch too), carried out in order
        for each VM."""
        self.handle(CommandsReceived(commands, self.driver.inventory(), epoch))

    async def execute(self, command: AgentCommand) -> None:
        """Submit one command and wait until the driver is done (for tests)."""
        self.submit([command])
        await self.operations.settled()

    def idle(self) -> bool:
        """No command is queued or running (for tests)."""
        return self.state.idle() and self.operations.idle()
