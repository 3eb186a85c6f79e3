"""What flows into the core (inputs) and out of it (actions). Pure data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import msgspec

from common.ids import HostId
from common.messages import (
    AgentCommand,
    AttachDisk,
    CaptureVm,
    CreateVm,
    DetachDisk,
    ErrorCode,
    Event,
    Heartbeat,
    HeartbeatAck,
    HostRef,
    ImageCaptured,
    ImageRef,
    UploadImage,
    VmRef,
)


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


HOST_OPS = frozenset({Op.CORDON, Op.UNCORDON, Op.DRAIN})
"""Operations on a host (body HostRef, reply HostReply); the others act on a VM."""
VM_STORAGE_OPS = frozenset({Op.ATTACH_DISK, Op.DETACH_DISK, Op.CAPTURE})
"""Disk operations on a VM (reply VmReply); see scheduler/storageops.py."""
IMAGE_OPS = frozenset({Op.IMAGE_UPLOAD, Op.IMAGE_DELETE, Op.IMAGE_CAPTURED})
"""Gallery operations (reply ImageReply); see scheduler/storageops.py."""

StorageBody = AttachDisk | DetachDisk | CaptureVm | UploadImage | ImageRef | ImageCaptured


@dataclass(frozen=True, slots=True)
class Mutation:
    """A mutating API request (from request/reply or from the jobs stream)."""

    op: Op
    body: CreateVm | VmRef | HostRef | StorageBody
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
    subject: str
    event: Event


@dataclass(frozen=True, slots=True)
class DropImageObject:
    """Remove an image's bytes from the object store (no live image uses them any more)."""

    sha256: str


Action = Reply | Ack | SendCommands | Emit | DropImageObject
