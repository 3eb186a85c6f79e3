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

from common.ids import HOST_ID_PATTERN, IMAGE_NAME_PATTERN, SHA256_PATTERN, VM_NAME_PATTERN
from common.resources import Resources

VmNameField = Annotated[str, msgspec.Meta(pattern=VM_NAME_PATTERN, description="[a-z0-9-]{1,63}")]
ImageNameField = Annotated[
    str, msgspec.Meta(pattern=IMAGE_NAME_PATTERN, description="[a-z0-9._-]{1,63}")
]
Sha256Field = Annotated[str, msgspec.Meta(pattern=SHA256_PATTERN)]
MAX_DATA_DISKS = 8
DiskSizeMib = Annotated[int, msgspec.Meta(ge=1, le=16 * 1024 * 1024)]
HostIdField = Annotated[str, msgspec.Meta(pattern=HOST_ID_PATTERN)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
DigestField = Annotated[str, msgspec.Meta(max_length=64)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Generation = Annotated[int, msgspec.Meta(ge=0)]


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


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_SIZE = "unknown_size"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"
    INSUFFICIENT_CAPACITY = "insufficient_capacity"
    INVALID_STATE = "invalid_state"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    INVALID_IMAGE = "invalid_image"
    """A create names an image the gallery does not have, or an uploaded file is not a qcow2
    or raw disk image (or not what was announced)."""
    UNAUTHORIZED = "unauthorized"
    """HTTP API only: a missing or wrong bearer token."""
    FORBIDDEN = "forbidden"
    """HTTP API only: a Host or Origin not in ``http_allowed_hosts`` (another site's page)."""
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    """HTTP API only: a mutation whose body is not declared ``application/json``."""
    TOO_MANY_REQUESTS = "too_many_requests"
    """HTTP API only: this client already holds as many event streams as it may."""
    MISSING_REQUEST_ID = "missing_request_id"
    """Jobs stream only: a job with neither a ``Nats-Msg-Id`` header nor a ``request_id``
    (without one, a redelivered or republished job could be applied twice)."""


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
    """Sizes of empty data disks to give the VM (host-local, like its OS disk)."""


class VmRef(msgspec.Struct, kw_only=True):
    """Body of vm.get, vm.stop, vm.start and vm.delete."""

    name: VmNameField
    request_id: RequestId | None = None


class HostRef(msgspec.Struct, kw_only=True):
    """Body of host.cordon, host.uncordon and host.drain (idempotent by nature)."""

    host_id: HostIdField
    request_id: RequestId | None = None


class ListVms(msgspec.Struct, kw_only=True):
    state: VmState | None = None
    host: HostIdField | None = None
    region: ShortText | None = None


class ListHosts(msgspec.Struct, kw_only=True):
    pass


class ListSizes(msgspec.Struct, kw_only=True):
    pass


# --------------------------------------------------------------------------- API replies


class ErrorBody(msgspec.Struct):
    code: ErrorCode
    detail: str


class VmInfo(msgspec.Struct, kw_only=True):
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
    draining: bool = False
    """A drain is under way: the host is cordoned and its VMs are being moved elsewhere."""
    drain_remaining: int = 0
    """VMs of a draining host not yet running on another host."""


class VmReply(msgspec.Struct, omit_defaults=True):
    vm: VmInfo | None = None
    error: ErrorBody | None = None


class HostReply(msgspec.Struct, omit_defaults=True):
    host: HostInfo | None = None
    error: ErrorBody | None = None


class VmListReply(msgspec.Struct, omit_defaults=True):
    vms: list[VmInfo] = []
    error: ErrorBody | None = None


class HostListReply(msgspec.Struct, omit_defaults=True):
    hosts: list[HostInfo] = []
    error: ErrorBody | None = None


class SizeListReply(msgspec.Struct, omit_defaults=True):
    sizes: list[Size] = []
    error: ErrorBody | None = None


class ErrorReply(msgspec.Struct):
    error: ErrorBody


# --------------------------------------------------------------------------- usage metering
# stratus.api.usage.get (UsageQuery -> UsageReply) and GET /v1/usage?since=&until=.

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class UsageQuery(msgspec.Struct, kw_only=True):
    """A usage window: the clock hours that begin in [since, until). Defaults: since the first
    recorded event, until now."""

    since: AwareTime | None = None
    until: AwareTime | None = None


class VmUsage(msgspec.Struct, kw_only=True):
    name: str
    size: str
    held_s: float
    """Seconds the VM held capacity inside the window (from placement to release)."""
    hours: int
    """Billed hours: clock hours in which the VM held capacity at all (each started hour)."""
    price_per_hour: float
    cost: float


class SizeUsage(msgspec.Struct, kw_only=True):
    size: str
    vms: int
    held_s: float
    hours: int
    price_per_hour: float
    cost: float


class UsageReport(msgspec.Struct, kw_only=True):
    since: datetime
    until: datetime
    vms: list[VmUsage] = []
    sizes: list[SizeUsage] = []
    hours: int = 0
    cost: float = 0.0


class UsageReply(msgspec.Struct, omit_defaults=True):
    usage: UsageReport | None = None
    error: ErrorBody | None = None


# --------------------------------------------------------------------------- agent protocol
# stratus.host.<id>.cmd carries HostCommands; stratus.host.<id>.hb carries Heartbeat (request)
# answered by HeartbeatAck.


class DiskKind(StrEnum):
    OS = "os"
    """The VM's boot disk: a copy-on-write (qcow2) overlay of its image."""
    DATA = "data"
    """An empty disk the VM got at create time or by ``disk attach``."""


class DiskStorage(StrEnum):
    """Where a disk's bytes live. Only host-local storage exists so far: the disk is a file on
    one host and is gone with it. Shared storage (reachable from every host) is a later kind."""

    HOST_LOCAL = "host_local"


class DiskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A disk as the agent needs it: which file to use or create, and from what."""

    disk_id: str
    """Unique for the lifetime of the cluster (a rebuilt disk gets a new id)."""
    kind: DiskKind
    size_mib: int = 0
    """Data disks: their size. OS disks: 0 (the image's size)."""
    image: str = ""
    """OS disks: the image's name (a host may carry built-in images such as ``tiny``)."""
    image_sha256: str = ""
    """OS disks: the image's digest in the gallery; empty means the host's built-in copy."""
    storage: DiskStorage = DiskStorage.HOST_LOCAL


class VmSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: VmNameField
    size: str
    cpu_milli: int
    mem_mib: int
    image: str
    disks: list[DiskSpec] = []
    """OS disk first, then data disks in attach order. Empty (older schedulers): the agent
    makes an OS disk of ``image`` named after the VM."""


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


class CaptureDisk(msgspec.Struct, tag="capture_disk", kw_only=True):
    """Flatten the OS disk ``disk_id`` of the stopped VM ``name`` into the gallery image
    ``image`` and report it (``ImageCaptured``). Repeating it re-reports the result."""

    name: VmNameField
    generation: Generation
    disk_id: str
    image: ImageNameField


AgentCommand = StartVm | StopVm | DeleteVm | ResumeVm | CaptureDisk


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


class ObservedVm(msgspec.Struct, kw_only=True):
    name: VmNameField
    generation: Generation
    state: ObservedState
    cpu_milli: Annotated[int, msgspec.Meta(ge=0)]
    mem_mib: Annotated[int, msgspec.Meta(ge=0)]
    reason: str = ""
    retryable: bool = False

    @property
    def resources(self) -> Resources:
        return Resources(self.cpu_milli, self.mem_mib)


class Heartbeat(msgspec.Struct, kw_only=True):
    """A host's full report: identity, capacity and its whole VM inventory (level-triggered).

    An inventory the scheduler already holds may be sent as its digest alone (``vms_omitted``):
    it still stands for the whole inventory, and costs the scheduler no decoding of it.
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


class HeartbeatAck(msgspec.Struct, kw_only=True):
    """The scheduler's answer to a heartbeat: the host's lease is renewed.

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


# --------------------------------------------------------------------------- console
# stratus.console.<host>.<vm>.out carries ConsoleEvent (the agent running the VM publishes);
# .tail (ConsoleTail -> ConsoleReply) and .in (ConsoleInput -> ConsoleReply) are requests the
# same agent answers. Offsets count bytes of the VM's console output since it last started.

MAX_CONSOLE_TAIL_BYTES = 256 * 1024
"""The most recent output one tail request returns (base64 in JSON stays under 1 MiB)."""
MAX_CONSOLE_INPUT_BYTES = 4096


class ConsoleOutput(msgspec.Struct, tag="output", kw_only=True):
    """Bytes the VM wrote to its serial console, starting at byte ``offset`` of its output."""

    vm: str
    generation: int
    offset: Annotated[int, msgspec.Meta(ge=0)]
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class ConsoleClosed(msgspec.Struct, tag="closed", kw_only=True):
    """The VM no longer runs on this host (stopped, deleted, moved): no more output here."""

    vm: str
    generation: int
    reason: str = ""


ConsoleEvent = ConsoleOutput | ConsoleClosed


class ConsoleTail(msgspec.Struct, kw_only=True):
    """Ask for the VM's most recent console output (at most ``max_bytes``)."""

    max_bytes: Annotated[int, msgspec.Meta(ge=0, le=MAX_CONSOLE_TAIL_BYTES)] = 64 * 1024


class ConsoleInput(msgspec.Struct, kw_only=True):
    """Bytes typed on the VM's serial console."""

    data: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_CONSOLE_INPUT_BYTES)]


class ConsoleReply(msgspec.Struct, omit_defaults=True):
    output: ConsoleOutput | None = None
    """Tail: the recent output (its ``end`` is where live output continues)."""
    writable: bool = False
    """The driver relays input to this VM's console."""
    error: ErrorBody | None = None


# --------------------------------------------------------------------------- events
# JetStream stream on stratus.events.>; one event per state change, numbered by ``seq``.


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


class DiskInfo(msgspec.Struct, kw_only=True):
    disk_id: str
    kind: DiskKind
    size_mib: int
    """Data disks: their size; OS disks: 0 (the image's size)."""
    image: str = ""
    storage: DiskStorage = DiskStorage.HOST_LOCAL
    host: str | None = None
    """Host-local disks: the host holding the file (None until the VM first ran)."""


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


class ImageState(StrEnum):
    CAPTURING = "capturing"
    AVAILABLE = "available"
    FAILED = "failed"


class ImageInfo(msgspec.Struct, kw_only=True):
    name: str
    version: int
    os: str
    format: str
    size_bytes: int
    sha256: str
    """Empty for a built-in image the scheduler holds no copy of (hosts use their own)."""
    state: ImageState
    builtin: bool = False
    source_vm: str | None = None
    reason: str = ""
    created_at: datetime


class ListImages(msgspec.Struct, kw_only=True):
    pass


class UploadImage(msgspec.Struct, kw_only=True):
    """Register an image whose bytes the caller put in the images object store under
    ``sha256``; the scheduler checks them (a qcow2 or raw disk image, of that size)."""

    name: ImageNameField
    sha256: Sha256Field
    size_bytes: Annotated[int, msgspec.Meta(gt=0)]
    os: ShortText = "linux"
    request_id: RequestId | None = None
    format: str = ""
    """Set by the scheduler from the bytes it checked (``qcow2`` or ``raw``)."""


class ImageRef(msgspec.Struct, kw_only=True):
    name: ImageNameField
    request_id: RequestId | None = None


class ImageCaptured(msgspec.Struct, kw_only=True):
    """Agent -> scheduler: the OS disk of ``vm`` was flattened and stored (or ``error``)."""

    image: ImageNameField
    vm: VmNameField
    host_id: HostIdField
    sha256: str = ""
    size_bytes: int = 0
    format: str = "qcow2"
    error: str = ""
    request_id: RequestId | None = None


class ImageReply(msgspec.Struct, omit_defaults=True):
    image: ImageInfo | None = None
    error: ErrorBody | None = None


class ImageListReply(msgspec.Struct, omit_defaults=True):
    images: list[ImageInfo] = []
    error: ErrorBody | None = None
