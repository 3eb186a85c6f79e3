"""What goes into and comes out of :class:`hostagent.state.AgentState`. Pure values.

Stimuli say what happened (commands arrived, a driver operation finished, the watchdog looked,
a heartbeat is due, an ack arrived); instructions say what to do (call the driver, log an
execution, publish the lease, send a heartbeat, ...). The shell (:mod:`hostagent.agent`, the
heartbeat loop, the simulated pool) turns stimuli into calls of ``AgentState.handle`` and
carries out the instructions it gets back, as Dask's ``BaseWorker`` does for its
``WorkerState``.

Every stimulus that needs the driver's view carries ``vms``: the driver's inventory taken by the
shell at that moment (``HypervisorDriver.inventory()`` is synchronous and cheap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from common.messages import (
    AgentCommand,
    CaptureDisk,
    Heartbeat,
    HeartbeatAck,
    ObservedVm,
    VmSpec,
)
from common.migration_messages import MigrateOut
from common.network_messages import ConfigureNetworks, UpdateNetworks
from common.replica_messages import (
    ConfigureReplicas,
    ReplicaStatus,
    SetDiskReplicas,
    UpdateReplicas,
)
from hostagent.execlog import ExecEvent
from hostagent.lease import Lease

# --------------------------------------------------------------------------- stimuli


class Endpoint(NamedTuple):
    """Where a migration's destination waits (the driver's ``IncomingEndpoint``, as a value)."""

    address: str
    migration_port: int
    nbd_port: int


class Progress(NamedTuple):
    """How far an outgoing migration is (the driver's ``MigrationProgress``, as a value)."""

    transferred_mib: int
    total_mib: int


@dataclass(frozen=True, slots=True)
class CommandsReceived:
    """A batch of commands from the scheduler, judged on arrival."""

    commands: Sequence[AgentCommand]
    vms: Sequence[ObservedVm]
    epoch: int = 0
    """The epoch of the scheduler leadership that sent them (``HostCommands.epoch``)."""


@dataclass(frozen=True, slots=True)
class OpDone:
    """The driver finished ``op`` (``error`` set when it raised ``DriverError``)."""

    op: DriverCall | RunCapture
    vms: Sequence[ObservedVm]
    error: str | None = None
    retryable: bool = False
    endpoint: Endpoint | None = None
    """:class:`DriverPrepareIncoming` that succeeded: where the VM waits for its state."""


@dataclass(frozen=True, slots=True)
class FenceTick:
    """The fence watchdog looks at the lease."""

    vms: Sequence[ObservedVm]


@dataclass(frozen=True, slots=True)
class HeartbeatDue:
    """The shell is about to send a heartbeat: the state answers with :class:`SendHeartbeat`."""

    vms: Sequence[ObservedVm]
    progress: Mapping[str, Progress] = field(default_factory=dict)
    """The progress of the outgoing migrations under way, by VM."""
    replicas: Sequence[ReplicaStatus] = ()
    """The replicas this host serves that are not ready (the replica backend's statuses)."""


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The scheduler answered a heartbeat."""

    ack: HeartbeatAck


@dataclass(frozen=True, slots=True)
class NetworksApplied:
    """The network backend finished applying ``config`` (``error`` set when it could not)."""

    config: ConfigureNetworks | UpdateNetworks
    vnis: frozenset[int]
    """The networks in place now of those ``config`` names (an update: and of those in place
    before)."""
    digest: str
    """The backend's applied digest now (``config.digest`` unless it failed)."""
    vms: Sequence[ObservedVm]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicasApplied:
    """The replica backend finished applying ``config`` (``error`` set when it could not)."""

    config: ConfigureReplicas | UpdateReplicas
    digest: str
    """The backend's applied digest now (``config.digest`` unless it failed)."""
    error: str | None = None


Stimulus = (
    CommandsReceived
    | OpDone
    | FenceTick
    | HeartbeatDue
    | AckReceived
    | NetworksApplied
    | ReplicasApplied
)

# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True, slots=True)
class DriverStart:
    spec: VmSpec
    generation: int

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class DriverStop:
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class DriverDestroy:
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class DriverForget:
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class DriverPause:
    """Fence one VM. Unlike the others, it may run while another operation on the VM runs."""

    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class DriverResume:
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class DriverPrepareIncoming:
    """Destination: get ready to receive ``spec`` as ``generation`` from ``source``."""

    spec: VmSpec
    generation: int
    listen_address: str
    source: str

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class DriverMigrateOut:
    """Source: send the VM (at ``generation``) as ``command`` says. Runs as long as the copy;
    the VM keeps running meanwhile."""

    command: MigrateOut

    @property
    def name(self) -> str:
        return self.command.name

    @property
    def generation(self) -> int:
        return self.command.generation


@dataclass(frozen=True, slots=True)
class DriverCancelMigration:
    """Source: end the VM's outgoing migration (attempt ``attempt``) without a switchover.
    Like a pause, it runs beside the VM's operation (the migration it ends)."""

    name: str
    generation: int
    attempt: int


@dataclass(frozen=True, slots=True)
class DriverFinishIncoming:
    """Destination: the VM received as ``generation`` runs from now on."""

    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class DriverSetReplicas:
    """Change the copy set of one replicated disk of a running VM (``SetDiskReplicas``)."""

    command: SetDiskReplicas

    @property
    def name(self) -> str:
        return self.command.name

    @property
    def generation(self) -> int:
        return self.command.generation


MigrationCall = (
    DriverPrepareIncoming | DriverMigrateOut | DriverCancelMigration | DriverFinishIncoming
)
"""The calls of a ``MigratingDriver``; a driver that is not one fails them."""

DriverCall = (
    DriverStart
    | DriverStop
    | DriverDestroy
    | DriverForget
    | DriverPause
    | DriverResume
    | DriverSetReplicas
    | MigrationCall
)
"""One call of the driver; the shell answers each with :class:`OpDone`."""


@dataclass(frozen=True, slots=True)
class RunCapture:
    """Hand ``command`` to the capturer (``held``: the VM is on this host); then :class:`OpDone`."""

    command: CaptureDisk
    held: bool

    @property
    def name(self) -> str:
        return self.command.name


@dataclass(frozen=True, slots=True)
class ApplyNetworks:
    """Have the network backend make the host's networks ``config`` (or apply its changes);
    then :class:`NetworksApplied`."""

    config: ConfigureNetworks | UpdateNetworks
    known: frozenset[int] = frozenset()
    """The networks in place before (an update's result names only those it adds)."""


@dataclass(frozen=True, slots=True)
class ApplyReplicas:
    """Have the replica backend hold the replicas ``config`` names (or apply the update); then
    :class:`ReplicasApplied`."""

    config: ConfigureReplicas | UpdateReplicas


@dataclass(frozen=True, slots=True)
class RecordExecution:
    """Write a line to the execution log (the inventory changed with it)."""

    vm: str
    generation: int
    event: ExecEvent


@dataclass(frozen=True, slots=True)
class ReportChanged:
    """The report changed (inventory or fenced flag): the next heartbeat should go soon."""


@dataclass(frozen=True, slots=True)
class ReportNow:
    """A migration's status changed: send the report at once, not after the usual coalescing
    gap (the switchover waits for it)."""


@dataclass(frozen=True, slots=True)
class LeaseRenewed:
    lease: Lease


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class TimingAdopted:
    """The scheduler's timing knobs replaced ours."""

    scheduler_id: str
    heartbeat_interval_s: float
    fence_after_s: float


@dataclass(frozen=True, slots=True)
class AdoptCpuOvercommit:
    """The scheduler applies this CPU overcommit ratio to the host."""

    ratio: float


@dataclass(frozen=True, slots=True)
class AdmitHeld:
    """The host id is this agent's now: carry out the commands held until it was (the shell
    hands them back as :class:`CommandsReceived`, judged anew)."""

    commands: tuple[AgentCommand, ...]


@dataclass(frozen=True, slots=True)
class ClaimRefused:
    """Another live agent holds this host id: this one must exit, having executed nothing."""

    reason: str


class Level(IntEnum):
    """Log levels, with the values of :mod:`logging`'s."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40


@dataclass(frozen=True, slots=True)
class Note:
    """A decision worth a log line: ``event`` is a ``%``-format string for ``args``."""

    level: Level
    event: str
    args: tuple[object, ...] = ()

    @classmethod
    def debug(cls, event: str, *args: object) -> Note:
        return cls(Level.DEBUG, event, args)

    @classmethod
    def info(cls, event: str, *args: object) -> Note:
        return cls(Level.INFO, event, args)

    @classmethod
    def warning(cls, event: str, *args: object) -> Note:
        return cls(Level.WARNING, event, args)

    @classmethod
    def error(cls, event: str, *args: object) -> Note:
        return cls(Level.ERROR, event, args)


Instruction = (
    DriverCall
    | RunCapture
    | ApplyNetworks
    | ApplyReplicas
    | RecordExecution
    | ReportChanged
    | ReportNow
    | LeaseRenewed
    | SendHeartbeat
    | TimingAdopted
    | AdoptCpuOvercommit
    | AdmitHeld
    | ClaimRefused
    | Note
)

REPORT_CHANGED = ReportChanged()
REPORT_NOW = ReportNow()
