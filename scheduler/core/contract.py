"""What flows into the core (inputs) and out of it (a ``StepResult``: actions and the records
to store). Pure data. Actions name hosts and VMs, never NATS subjects: the shell maps them
(common/subjects.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import msgspec

from common.fields import ErrorCode
from common.ids import HostId
from common.image_messages import ImageCaptured, ImageRef, UploadImage
from common.messages import (
    AgentCommand,
    AttachDisk,
    CaptureVm,
    CreateVm,
    DetachDisk,
    Event,
    Heartbeat,
    HeartbeatAck,
    HostRef,
    VmRef,
)
from common.migration_messages import MigrateVm
from common.network_messages import AddEndpoint, CreateVnet, RemoveEndpoint, VnetRef
from scheduler.state.model import HostRecord, ReplyRecord, VmRecord
from scheduler.state.storage import ImageRecord, NetCounters, VnetRecord


@dataclass(frozen=True, slots=True)
class Now:
    """The time, as an input: monotonic seconds for liveness, wall time for records."""

    mono_s: float
    wall: datetime


class Op(StrEnum):
    CREATE = "create"
    STOP = "stop"
    START = "start"
    DELETE = "delete"
    CORDON = "cordon"
    UNCORDON = "uncordon"
    DRAIN = "drain"
    ATTACH_DISK = "attach_disk"
    DETACH_DISK = "detach_disk"
    CAPTURE = "capture"
    IMAGE_UPLOAD = "image_upload"
    IMAGE_DELETE = "image_delete"
    IMAGE_CAPTURED = "image_captured"
    VNET_CREATE = "vnet_create"
    VNET_DELETE = "vnet_delete"
    ENDPOINT_ADD = "endpoint_add"
    ENDPOINT_REMOVE = "endpoint_remove"
    MIGRATE = "migrate"
    MIGRATE_CANCEL = "migrate_cancel"


HOST_OPS = frozenset({Op.CORDON, Op.UNCORDON, Op.DRAIN})
"""Operations on a host (body HostRef, reply HostReply); the others act on a VM."""
IMAGE_OPS = frozenset({Op.IMAGE_UPLOAD, Op.IMAGE_DELETE, Op.IMAGE_CAPTURED})
"""Gallery operations (reply ImageReply); see scheduler/core/images.py."""
VNET_OPS = frozenset({Op.VNET_CREATE, Op.VNET_DELETE})
"""Network operations (reply VnetReply); see scheduler/core/networks.py."""
ANSWERED_AT_ONCE = IMAGE_OPS | VNET_OPS
"""Operations answered as they are handled (not after placement, as VM and host ones)."""

StorageBody = AttachDisk | DetachDisk | CaptureVm | UploadImage | ImageRef | ImageCaptured
NetworkBody = CreateVnet | VnetRef | AddEndpoint | RemoveEndpoint


@dataclass(frozen=True, slots=True)
class Mutation:
    """A mutating API request (from request/reply or from the jobs stream)."""

    op: Op
    body: CreateVm | VmRef | HostRef | StorageBody | NetworkBody | MigrateVm
    token: int
    via_job: bool = False
    job_subject: str = ""


@dataclass(frozen=True, slots=True)
class InvalidJob:
    """A job on the jobs stream that could not be decoded: rejected through the event stream."""

    subject: str
    request_id: str | None
    code: ErrorCode
    detail: str
    token: int


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    heartbeat: Heartbeat
    token: int


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The scheduler's NATS connection is back after an outage. No heartbeat could arrive
    during it, so every host gets a fresh window before it is judged again."""


@dataclass(frozen=True, slots=True)
class BuiltinImage:
    """A configured built-in image whose bytes the shell stored (at start-up): the core
    registers it, or a new version of it when its bytes changed."""

    name: str
    sha256: str
    size_bytes: int
    format: str


Input = Mutation | InvalidJob | HeartbeatReceived | Tick | Reconnected


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request ``token`` (an API reply, or a job ack when ``body`` is None)."""

    token: int
    body: msgspec.Struct | None


@dataclass(frozen=True, slots=True)
class Ack:
    """Renew a host's lease by answering its heartbeat."""

    token: int
    ack: HeartbeatAck


@dataclass(frozen=True, slots=True)
class SendCommands:
    host_id: HostId
    commands: tuple[AgentCommand, ...]


@dataclass(frozen=True, slots=True)
class Emit:
    """Publish an event (the shell stores it in the outbox first; its subject comes from
    ``common.subjects.of_event``)."""

    event: Event


@dataclass(frozen=True, slots=True)
class DropImageObject:
    """Remove an image's bytes from the object store (no live image uses them any more)."""

    sha256: str


Action = Reply | Ack | SendCommands | Emit | DropImageObject


@dataclass(slots=True)
class StepResult:
    """What one core step produced: the records to store (all in one transaction) and the
    actions to carry out once they are stored. The records are the core's own objects: the
    shell encodes (or copies) them before the core's next step."""

    actions: list[Action]
    vms: list[VmRecord]
    hosts: list[HostRecord]
    images: list[ImageRecord]
    replies: dict[str, ReplyRecord]
    vnets: list[VnetRecord] = field(default_factory=list)
    counters: NetCounters | None = None
    """The network counters, when this step moved them."""
