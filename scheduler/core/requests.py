"""Request ids bound to their request. Pure.

A client's ``request_id`` (the jobs stream's ``Nats-Msg-Id``) names one request: its operation,
its target (the VM, host or image it acts on) and its body. A retry of that request gets the
original answer (a VM operation's stored reply; host and gallery operations, idempotent by
nature, are carried out again); the same id on any other request is answered ``conflict`` and
changes nothing. Two copies of one request in one core step apply once: the second gets the
first's reply (``step.py`` answers it after the step's other answers).
"""

from __future__ import annotations

import hashlib

from msgspec.structs import replace

from common import codec
from common.fields import ErrorBody, ErrorCode
from common.image_messages import ImageRef, ImageReply, UploadImage
from common.messages import (
    AttachDisk,
    CaptureVm,
    CreateVm,
    DetachDisk,
    HostRef,
    HostReply,
    VmRef,
    VmReply,
)
from common.migration_messages import MigrateVm
from common.network_messages import AddEndpoint, CreateVnet, RemoveEndpoint, VnetRef, VnetReply
from scheduler.core import views
from scheduler.core.contract import HOST_OPS, IMAGE_OPS, VNET_OPS, Op
from scheduler.state.model import ReplyRecord

Bound = (
    CreateVm
    | VmRef
    | HostRef
    | AttachDisk
    | DetachDisk
    | CaptureVm
    | UploadImage
    | ImageRef
    | CreateVnet
    | VnetRef
    | AddEndpoint
    | RemoveEndpoint
    | MigrateVm
)
"""Bodies whose request id is bound (an agent's capture report is not a client request)."""


def request_of(op: Op, body: Bound) -> ReplyRecord:
    """What ``body``'s request id names: the operation, its target, a digest of the body."""
    match body:
        case AttachDisk() | DetachDisk() | AddEndpoint() | RemoveEndpoint():
            target = body.vm
        case HostRef():
            target = body.host_id
        case _:
            target = body.name
    plain = replace(body, request_id=None)
    digest = hashlib.sha256(codec.encode(plain)).hexdigest()[:32]
    return ReplyRecord(op=op.value, target=target, digest=digest)


def conflict(op: Op, request_id: str) -> VmReply | HostReply | ImageReply | VnetReply:
    """The answer to a request id used for another request (nothing is done)."""
    detail = f"request id {request_id} was used for another request"
    if op in HOST_OPS:
        return views.host_error(ErrorCode.CONFLICT, detail)
    if op in IMAGE_OPS:
        return views.image_error(ErrorCode.CONFLICT, detail)
    if op in VNET_OPS:
        return VnetReply(error=ErrorBody(code=ErrorCode.CONFLICT, detail=detail))
    return views.vm_error(ErrorCode.CONFLICT, detail)
