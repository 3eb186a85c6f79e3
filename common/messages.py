"""Wire schemas: the single source of truth for the Stratus protocol (docs/protocol.md is made
from them).

Schema evolution follows msgspec's rules: new fields get defaults, types never change, and wire
structs accept unknown fields so that old readers keep working with newer writers.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

# The shared field types and the error body live in common/fields.py; they are re-exported here,
# where most code has always found them. Console, usage, image and network messages have
# modules of their own.
from common.fields import (
    MAX_DATA_DISKS as MAX_DATA_DISKS,
    DigestField as DigestField,
    DiskSizeMib as DiskSizeMib,
    ErrorBody as ErrorBody,
    ErrorCode as ErrorCode,
    Generation as Generation,
    HostIdField as HostIdField,
    ImageNameField as ImageNameField,
    RequestId as RequestId,
    Sha256Field as Sha256Field,
    ShortText as ShortText,
    VmNameField as VmNameField,
)
from common.migration_messages import (
    CancelMigration,
    FinishIncoming,
    MigrateOut,
    MigrationInfo,
    MigrationReport,
)
from common.network_messages import (
    MAX_NICS,
    EndpointInfo,
    NetworkCommand,
    NicInfo,
    NicRequest,
)
from common.replica_messages import (
    DiskReplicas,
    ReplicaCommand,
    ReplicaInfo,
    ReplicaStatus,
)
from common.resources import Resources
from common.spec_messages import (
    DiskKind as DiskKind,
    DiskSpec as DiskSpec,
    DiskStorage as DiskStorage,
    VmSpec as VmSpec,
)


class VmState(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    LOST = "lost"


class HostState(StrEnum):
    UP = "up"
    DOWN = "down"


class Size(msgspec.Struct, frozen=True):
    name: ShortText
    cpu_milli: Annotated[int, msgspec.Meta(gt=0)]
    mem_mib: Annotated[int, msgspec.Meta(gt=0)]

    @property
    def resources(self) -> Resources:
        return Resources(self.cpu_milli, self.mem_mib)


# --------------------------------------------------------------------------- API requests
# Subjects stratus.api.<noun>.<verb> (request/reply) and stratus.jobs.<noun>.<verb> (JetStream).


class CreateVm(msgspec.Struct, kw_only=True):
    name: VmNameField
    size: ShortText
    image: ShortText = "tiny"
    region: ShortText | None = None
    availability_set: ShortText | None = None
    request_id: RequestId | None = None
    data_disks_mib: Annotated[list[DiskSizeMib], msgspec.Meta(max_length=MAX_DATA_DISKS)] = []
    """Sizes of empty data disks to give the VM (stored like its OS disk)."""
    nics: Annotated[list[NicRequest], msgspec.Meta(max_length=MAX_NICS)] = []
    """The VM's network interfaces, in order; empty: a VM without a network."""
    storage: DiskStorage | None = None
    """Where its disks live; None: the cluster's default (``[storage]`` in the scheduler's
    config: replicated once there are enough fault domains, else host-local)."""


class VmRef(msgspec.Struct, kw_only=True):
    """Body of vm.get, vm.stop, vm.start and vm.delete."""

    name: VmNameField
    request_id: RequestId | None = None


class HostRef(msgspec.Struct, kw_only=True):
    """Body of host.cordon, host.uncordon and host.drain (idempotent by nature)."""

    host_id: HostIdField
    request_id: RequestId | None = None
    cold: bool = False
    """host.drain: move the VMs by stop and start, not live (a drain migrates each running VM
    live by default, and stops and starts only those that cannot migrate)."""


# --------------------------------------------------------------------------- API replies


class VmInfo(msgspec.Struct, kw_only=True, gc=False):
    name: str
    size: str
    cpu_milli: int
    mem_mib: int
    image: str
    region: str | None
    availability_set: str | None
    state: VmState
    host: str | None
    generation: int
    reason: str
    created_at: datetime
    updated_at: datetime
    disks: list[DiskInfo] = []
    """OS disk first, then data disks; each says where it lives."""
    nics: list[NicInfo] = []
    """The VM's addresses: kept across stop/start, failover and migration."""
    endpoints: list[EndpointInfo] = []
    migration: MigrationInfo | None = None
    """A live migration under way (the VM runs on ``host`` meanwhile)."""


class HostInfo(msgspec.Struct, kw_only=True):
    host_id: str
    state: HostState
    cordoned: bool
    region: str
    fault_domain: str
    labels: dict[str, str]
    capacity: Resources
    allocated: Resources
    vms: int
    fenced: bool
    driver: str
    last_heartbeat_age_s: float | None
    underlay_ip: str | None = None
    """The address other hosts reach this one at (VXLAN, endpoints); None until reported."""
    draining: bool = False
    """A drain is under way: the host is cordoned and its VMs are being moved elsewhere."""
    drain_remaining: int = 0
    """VMs of a draining host not yet running on another host."""
    migrations: int = 0
    """Live migrations under way from or to this host."""
    disk_capacity_mib: int = 0
    """Space for disks on this host as its agent reports it; 0: not reported."""
    disk_used_mib: int = 0
    """Space its disks and replicas take (their full size)."""
    replicas: int = 0
    """Disk replicas this host holds."""


class VmReply(msgspec.Struct, omit_defaults=True, gc=False):
    vm: VmInfo | None = None
    error: ErrorBody | None = None


class HostReply(msgspec.Struct, omit_defaults=True):
    host: HostInfo | None = None
    error: ErrorBody | None = None


class ErrorReply(msgspec.Struct):
    error: ErrorBody


# --------------------------------------------------------------------------- agent protocol
# stratus.host.<id>.cmd carries HostCommands; stratus.host.<id>.hb carries Heartbeat (request)
# answered by HeartbeatAck.


class StartVm(msgspec.Struct, tag="start_vm", kw_only=True):
    """Run ``vm`` at ``generation``; a copy with an older generation is destroyed first."""

    vm: VmSpec
    generation: Generation


class StopVm(msgspec.Struct, tag="stop_vm", kw_only=True):
    """Stop (deallocate) the VM if it runs at ``generation`` or older."""

    name: VmNameField
    generation: Generation


class DeleteVm(msgspec.Struct, tag="delete_vm", kw_only=True):
    """Destroy the VM if it is at ``generation`` or older (delete, or a stale copy)."""

    name: VmNameField
    generation: Generation


class ResumeVm(msgspec.Struct, tag="resume_vm", kw_only=True):
    """A fenced (paused) VM at exactly ``generation`` is still current: let it run again."""

    name: VmNameField
    generation: Generation


class PrepareIncoming(msgspec.Struct, tag="prepare_incoming", kw_only=True):
    """Destination of a live migration (common/migration_messages.py): get ready to receive
    ``vm`` from ``source`` as ``generation``: its disks empty at full size and exported, the VM
    paused waiting for its state. Repeating it changes nothing and re-reports."""

    vm: VmSpec
    generation: Generation
    source: HostIdField


class CaptureDisk(msgspec.Struct, tag="capture_disk", kw_only=True):
    """Flatten the OS disk ``disk_id`` of the stopped VM ``name`` into the gallery image
    ``image`` and report it (``ImageCaptured``). Repeating it re-reports the result."""

    name: VmNameField
    generation: Generation
    disk_id: str
    image: ImageNameField


MigrationCommand = PrepareIncoming | MigrateOut | CancelMigration | FinishIncoming
"""The live-migration commands (common/migration_messages.py)."""

AgentCommand = (
    StartVm
    | StopVm
    | DeleteVm
    | ResumeVm
    | CaptureDisk
    | NetworkCommand
    | MigrationCommand
    | ReplicaCommand
)


class HostCommands(msgspec.Struct, kw_only=True):
    host_id: HostIdField
    commands: list[AgentCommand]
    epoch: Annotated[int, msgspec.Meta(ge=0)] = 0
    """The leadership that sent this batch (grows with every leader); agents refuse a batch
    from an older epoch than the newest they have seen. 0: a scheduler without a lease."""


class ObservedState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    INCOMING = "incoming"
    """Destination of a live migration: paused, holding resources, receiving its state; it runs
    only on ``FinishIncoming``."""
    HANDED_OVER = "handed_over"
    """Source of a finished live migration: paused for good, its state on the destination;
    waits to be destroyed."""


class ObservedVm(msgspec.Struct, kw_only=True, gc=False):
    name: VmNameField
    generation: Generation
    state: ObservedState
    cpu_milli: Annotated[int, msgspec.Meta(ge=0)]
    mem_mib: Annotated[int, msgspec.Meta(ge=0)]
    reason: str = ""
    retryable: bool = False
    migration: MigrationReport | None = None
    """The VM's side of a live migration attempt, while one runs or until the next command."""
    disks: list[DiskReplicas] = []
    """Its replicated disks: which copies it writes to, joins or has seen fail."""

    @property
    def resources(self) -> Resources:
        return Resources(self.cpu_milli, self.mem_mib)


class Heartbeat(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A host's full report: identity, capacity and its whole VM inventory (level-triggered).

    An inventory the scheduler already holds may be sent as its digest alone (``vms_omitted``):
    it still stands for the whole inventory, and costs the scheduler no decoding of it. Fields
    at their default are left out on the wire (a steady report of a host without networks or
    replicas is 243 bytes, not 409): at 10,000 hosts a second they are most of what the
    scheduler reads.
    """

    host_id: HostIdField
    seq: Annotated[int, msgspec.Meta(ge=0)]
    boot_id: str
    capacity: Resources
    region: ShortText = "local"
    fault_domain: ShortText = "fd-0"
    labels: dict[str, str] = {}
    cpu_overcommit: float | None = None
    driver: str = "fake"
    fenced: bool = False
    vms: list[ObservedVm] = []
    inventory_digest: DigestField = ""
    """A digest of the inventory (``vms``) this report stands for; empty from agents that
    send every inventory in full."""
    vms_omitted: bool = False
    """``vms`` is left out because the scheduler said it holds the inventory of this digest."""
    underlay_ip: str = ""
    """The host's address on the network between hosts (``--underlay-ip``); empty: unknown."""
    network_digest: DigestField = ""
    """The digest of the network configuration this host holds; empty: none yet."""
    disk_capacity_mib: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Space for disks and replicas on this host; 0: not reported (not limited)."""
    replica_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    """The port of this host's replica server on ``underlay_ip``; 0: it serves no replicas."""
    replica_digest: DigestField = ""
    """The digest of the replica set this host holds; empty: none yet."""
    replicas: list[ReplicaStatus] = []
    """The replicas of the applied set that are not ready (creating, filling, failed)."""


class HeartbeatAck(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The scheduler's answer to a heartbeat: the host's lease is renewed, until
    ``fence_after_s`` after the agent sent that heartbeat (an ack arriving later renews
    nothing; one from a loaded scheduler, later than an interval, still counts).

    It also carries the cluster's timing knobs so that agents and scheduler agree on them.
    """

    host_id: str
    seq: int
    scheduler_id: str
    heartbeat_interval_s: float
    fence_after_s: float
    cpu_overcommit: float = 1.0
    """The CPU overcommit ratio the scheduler applies to this host, so that a host which did
    not declare its own keeps the same accounts as the scheduler."""
    inventory_digest: str = ""
    """The digest of this host's inventory that the scheduler holds: while the inventory is
    unchanged, the agent may send the digest alone. Empty when it holds none (after a restart,
    or after declaring the host dead): the agent sends its next report in full."""
    epoch: int = 0
    """The leadership that granted this ack; an ack from an older epoch than the newest the
    agent has seen renews nothing. 0: a scheduler without a lease."""
    claim_after_s: float = 0.0
    """How long the agent holding this host id must be silent before the scheduler accepts
    another boot id under it (a restarted agent waits at most this long to be accepted)."""
    refused: str = ""
    """Non-empty: this heartbeat was refused, and says why (another live agent holds the host
    id). Nothing of it was taken in and the lease is not renewed: the agent runs no command,
    and exits once refused for longer than ``claim_after_s``."""


# --------------------------------------------------------------------------- events
# JetStream stream on stratus.events.>; one event per state change, numbered by ``seq``.


class MigrationOutcome(StrEnum):
    """What a VM event says of a live migration (``VmEvent.migration_outcome``)."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Ended without a switchover (failed, timed out, cancelled): the VM runs where it was,
    or, if its source host died, it is placed again as after any host death."""


class VmEvent(msgspec.Struct, tag="vm", kw_only=True):
    seq: int
    time: datetime
    name: str
    state: VmState
    host: str | None
    generation: int
    reason: str = ""
    size: str = ""
    """The VM's size (usage metering prices each held hour by it); empty in older events."""
    nics: list[NicInfo] = []
    endpoints: list[EndpointInfo] = []
    """Where the VM's endpoints answer now (after a move: on its new host)."""
    migration: MigrationInfo | None = None
    """The live migration this event is about (under way, or just ended)."""
    migration_outcome: MigrationOutcome | None = None
    """Set on the events that start and end a live migration."""


class HostEvent(msgspec.Struct, tag="host", kw_only=True):
    seq: int
    time: datetime
    host_id: str
    state: HostState
    reason: str = ""
    cordoned: bool = False
    draining: bool = False
    drain_remaining: int = 0


class JobRejected(msgspec.Struct, tag="job_rejected", kw_only=True):
    seq: int
    time: datetime
    subject: str
    request_id: str | None
    code: ErrorCode
    detail: str


Event = VmEvent | HostEvent | JobRejected


# --------------------------------------------------------------------------- disks and images
# stratus.api.disk.attach|detach, stratus.api.vm.capture (VmReply); stratus.api.image.list|
# upload|delete (ImageReply, ImageListReply); agents report captures on stratus.host.<id>.captured.


class DiskInfo(msgspec.Struct, kw_only=True, gc=False):
    disk_id: str
    kind: DiskKind
    size_mib: int
    """Data disks: their size; OS disks: 0 (the image's size)."""
    image: str = ""
    storage: DiskStorage = DiskStorage.HOST_LOCAL
    host: str | None = None
    """Host-local disks: the host holding the file (None until the VM first ran)."""
    replicas: list[ReplicaInfo] = []
    """Replicated disks: each copy, where it lives and how it stands."""


class AttachDisk(msgspec.Struct, kw_only=True):
    """Give a stopped VM a new empty data disk (used from its next start)."""

    vm: VmNameField
    size_mib: DiskSizeMib
    request_id: RequestId | None = None


class DetachDisk(msgspec.Struct, kw_only=True):
    """Take a data disk off a stopped VM; its bytes are removed with it."""

    vm: VmNameField
    disk_id: ShortText
    request_id: RequestId | None = None


class CaptureVm(msgspec.Struct, kw_only=True):
    """Stop a running VM and turn its OS disk, flattened, into the gallery image ``image``."""

    name: VmNameField
    image: ImageNameField
    request_id: RequestId | None = None
