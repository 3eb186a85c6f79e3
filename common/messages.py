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

from common.ids import HOST_ID_PATTERN, VM_NAME_PATTERN
from common.resources import Resources

VmNameField = Annotated[str, msgspec.Meta(pattern=VM_NAME_PATTERN, description="[a-z0-9-]{1,63}")]
HostIdField = Annotated[str, msgspec.Meta(pattern=HOST_ID_PATTERN)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
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


class VmRef(msgspec.Struct, kw_only=True):
    """Body of vm.get, vm.stop, vm.start and vm.delete."""

    name: VmNameField
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


class VmReply(msgspec.Struct, omit_defaults=True):
    vm: VmInfo | None = None
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


# --------------------------------------------------------------------------- agent protocol
# stratus.host.<id>.cmd carries HostCommands; stratus.host.<id>.hb carries Heartbeat (request)
# answered by HeartbeatAck.


class VmSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: VmNameField
    size: str
    cpu_milli: int
    mem_mib: int
    image: str


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


AgentCommand = StartVm | StopVm | DeleteVm | ResumeVm


class HostCommands(msgspec.Struct, kw_only=True):
    host_id: HostIdField
    commands: list[AgentCommand]


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
    """A host's full report: identity, capacity and its whole VM inventory (level-triggered)."""

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


class HostEvent(msgspec.Struct, tag="host", kw_only=True):
    seq: int
    time: datetime
    host_id: str
    state: HostState
    reason: str = ""


class JobRejected(msgspec.Struct, tag="job_rejected", kw_only=True):
    seq: int
    time: datetime
    subject: str
    request_id: str | None
    code: ErrorCode
    detail: str


Event = VmEvent | HostEvent | JobRejected
