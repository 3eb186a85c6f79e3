"""NATS handlers of the publisher API: decode, validate, then answer reads at once or hand
mutations to the core loop (which answers them after commit). No handler dies on bad input."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
from nats.aio.msg import Msg

from common import codec, messages as m, subjects
from common.ids import HostId, vm_name_problem
from common.migration_messages import MigrateVm
from common.network_messages import ListVnets, VnetRef, VnetReply
from scheduler.core import drain
from scheduler.core.contract import (
    HOST_OPS,
    IMAGE_OPS,
    InvalidJob,
    Mutation,
    NetworkBody,
    Now,
    Op,
    StorageBody,
)
from scheduler.core.images import listed_images
from scheduler.core.migrations import in_flight
from scheduler.core.networks import listed_vnets, live_vnet, vnet_info
from scheduler.core.views import host_info, vm_info
from scheduler.state.cluster import ClusterState
from scheduler.state.model import VmRecord

log = logging.getLogger(__name__)

MUTATIONS: Final = {
    subjects.VM_CREATE: Op.CREATE,
    subjects.VM_STOP: Op.STOP,
    subjects.VM_START: Op.START,
    subjects.VM_DELETE: Op.DELETE,
    subjects.HOST_CORDON: Op.CORDON,
    subjects.HOST_UNCORDON: Op.UNCORDON,
    subjects.HOST_DRAIN: Op.DRAIN,
    subjects.DISK_ATTACH: Op.ATTACH_DISK,
    subjects.DISK_DETACH: Op.DETACH_DISK,
    subjects.VM_CAPTURE: Op.CAPTURE,
    subjects.IMAGE_UPLOAD: Op.IMAGE_UPLOAD,
    subjects.IMAGE_DELETE: Op.IMAGE_DELETE,
    subjects.VNET_CREATE: Op.VNET_CREATE,
    subjects.VNET_DELETE: Op.VNET_DELETE,
    subjects.ENDPOINT_ADD: Op.ENDPOINT_ADD,
    subjects.ENDPOINT_REMOVE: Op.ENDPOINT_REMOVE,
    subjects.VM_MIGRATE: Op.MIGRATE,
    subjects.VM_MIGRATE_CANCEL: Op.MIGRATE_CANCEL,
}
"""Capture reports are not API requests: agents send them on their own host's subject
(``decode_capture_report``); ``stratus.api.image.captured`` is answered "unknown subject"."""
VM_NAME_FIELDS: Final = {
    subjects.VM_CREATE: "name",
    subjects.VM_GET: "name",
    subjects.VM_STOP: "name",
    subjects.VM_START: "name",
    subjects.VM_DELETE: "name",
    subjects.VM_CAPTURE: "name",
    subjects.DISK_ATTACH: "vm",
    subjects.DISK_DETACH: "vm",
    subjects.ENDPOINT_ADD: "vm",
    subjects.ENDPOINT_REMOVE: "vm",
    subjects.VM_MIGRATE: "name",
    subjects.VM_MIGRATE_CANCEL: "name",
}
"""The field of each request body that names a VM (what a bad name is explained from)."""
_BODY_DECODERS: Final[dict[Op, Callable[[bytes], StorageBody | NetworkBody | MigrateVm]]] = {
    Op.ATTACH_DISK: codec.attach_disk.decode,
    Op.DETACH_DISK: codec.detach_disk.decode,
    Op.CAPTURE: codec.capture_vm.decode,
    Op.IMAGE_UPLOAD: codec.upload_image.decode,
    Op.IMAGE_DELETE: codec.image_ref.decode,
    Op.VNET_CREATE: codec.create_vnet.decode,
    Op.VNET_DELETE: codec.vnet_ref.decode,
    Op.ENDPOINT_ADD: codec.add_endpoint.decode,
    Op.ENDPOINT_REMOVE: codec.remove_endpoint.decode,
    Op.MIGRATE: codec.migrate_vm.decode,
}


_NO_ID = (
    "a job needs a Nats-Msg-Id header (or a request_id): it names the request, so that "
    "JetStream and the scheduler apply it once however often it is delivered"
)


def error_reply(code: m.ErrorCode, detail: str) -> bytes:
    return codec.encode(m.ErrorReply(error=m.ErrorBody(code=code, detail=detail)))


def in_words(exc: msgspec.DecodeError, data: bytes, vm_field: str | None) -> str:
    """What is wrong with a request, for people: a bad VM name is explained in words (the
    rule and an example), not with the pattern it failed; anything else as msgspec says it."""
    detail = str(exc)
    if vm_field is None or not detail.endswith(f"- at `$.{vm_field}`"):
        return detail
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return detail
    name = value.get(vm_field) if isinstance(value, dict) else None
    problem = vm_name_problem(name) if isinstance(name, str) else None
    return problem or detail


def decode_mutation(
    subject: str, data: bytes, token: int, *, via_job: bool = False, msg_id: str | None = None
) -> Mutation | InvalidJob:
    """Turn a request or job body into a Mutation, or an InvalidJob with a typed reason."""
    op = MUTATIONS.get(subjects.api_subject_of_job(subject) if via_job else subject)
    if op is None:
        return InvalidJob(subject, msg_id, m.ErrorCode.INVALID_REQUEST, "unknown subject", token)
    if len(data) > codec.MAX_MESSAGE_BYTES:
        detail = f"body of {len(data)} bytes exceeds {codec.MAX_MESSAGE_BYTES}"
        return InvalidJob(subject, msg_id, m.ErrorCode.TOO_LARGE, detail, token)
    try:
        body: m.CreateVm | m.VmRef | m.HostRef | StorageBody | NetworkBody | MigrateVm
        if op is Op.CREATE:
            body = codec.create_vm.decode(data)
        elif op in HOST_OPS:
            body = codec.host_ref.decode(data)
        elif op in _BODY_DECODERS:
            if via_job and op in IMAGE_OPS:
                detail = "image operations are request/reply only"
                return InvalidJob(subject, msg_id, m.ErrorCode.INVALID_REQUEST, detail, token)
            body = _BODY_DECODERS[op](data)
        else:
            body = codec.vm_ref.decode(data)
    except msgspec.DecodeError as exc:
        api_subject = subjects.api_subject_of_job(subject) if via_job else subject
        detail = in_words(exc, data, VM_NAME_FIELDS.get(api_subject))
        return InvalidJob(subject, msg_id, m.ErrorCode.INVALID_REQUEST, detail, token)
    if body.request_id is None and msg_id is not None:
        body.request_id = msg_id
    if via_job and body.request_id is None:
        return InvalidJob(subject, None, m.ErrorCode.MISSING_REQUEST_ID, _NO_ID, token)
    return Mutation(op, body, token, via_job=via_job, job_subject=subject if via_job else "")


def decode_capture_report(subject: str, data: bytes, token: int) -> Mutation | InvalidJob:
    """An agent's capture report on ``stratus.host.<id>.captured``: a Mutation, or an InvalidJob
    if it does not decode or names another host than its subject (the server lets only that
    host's agent publish there; the core then checks the capture was assigned to that host)."""
    if len(data) > codec.MAX_MESSAGE_BYTES:
        detail = f"body of {len(data)} bytes exceeds {codec.MAX_MESSAGE_BYTES}"
        return InvalidJob(subject, None, m.ErrorCode.TOO_LARGE, detail, token)
    try:
        body = codec.image_captured.decode(data)
    except msgspec.DecodeError as exc:
        return InvalidJob(subject, None, m.ErrorCode.INVALID_REQUEST, str(exc), token)
    if body.host_id != subjects.host_of_heartbeat(subject):
        detail = f"a capture report of host {body.host_id!r} on {subject}"
        return InvalidJob(subject, None, m.ErrorCode.INVALID_REQUEST, detail, token)
    return Mutation(Op.IMAGE_CAPTURED, body, token)


class ReadApi:
    """Answers read-only requests straight from the cluster state (no I/O, no await)."""

    def __init__(self, state: Callable[[], ClusterState], sizes: list[m.Size]) -> None:
        self._state = state
        self._sizes = sizes

    def answer(self, subject: str, data: bytes, now: Now) -> bytes:
        body = codec.empty_as_object(data)
        try:
            if subject == subjects.VM_GET:
                return self._get(codec.vm_ref.decode(body))
            if subject == subjects.VM_LIST:
                return self._list(codec.list_vms.decode(body))
            if subject == subjects.HOST_LIST:
                codec.list_hosts.decode(body)
                return self._hosts(now)
            if subject == subjects.IMAGE_LIST:
                codec.list_images.decode(body)
                return _listed("images", listed_images(self._state().images))
            if subject == subjects.SIZES_LIST:
                codec.list_sizes.decode(body)
                return _listed("sizes", self._sizes)
            if subject == subjects.VNET_GET:
                return self._vnet(codec.vnet_ref.decode(body))
            if subject == subjects.VNET_LIST:
                query: ListVnets = codec.list_vnets.decode(body)
                return _listed("vnets", listed_vnets(self._state(), query.region))
        except msgspec.DecodeError as exc:
            detail = in_words(exc, body, VM_NAME_FIELDS.get(subject))
            return error_reply(m.ErrorCode.INVALID_REQUEST, detail)
        return error_reply(m.ErrorCode.INVALID_REQUEST, f"unknown subject {subject}")

    def _info(self, record: VmRecord) -> m.VmInfo:
        """A VM as reads show it: a placed VM that asked for no region is in its host's."""
        info = vm_info(record)
        if info.region is None and record.host is not None:
            host = self._state().hosts.get(record.host)
            info.region = host.region if host is not None else None
        return info

    def _vnet(self, ref: VnetRef) -> bytes:
        state = self._state()
        record = live_vnet(state, ref.name)
        if record is None:
            return error_reply(m.ErrorCode.NOT_FOUND, f"network {ref.name!r} does not exist")
        return codec.encode(VnetReply(vnet=vnet_info(state, record)))

    def _get(self, ref: m.VmRef) -> bytes:
        record = self._state().vms.get(ref.name)  # type: ignore[call-overload]
        if record is None:
            return error_reply(m.ErrorCode.NOT_FOUND, f"vm {ref.name!r} does not exist")
        return codec.encode(m.VmReply(vm=self._info(record)))

    def _list(self, query: m.ListVms) -> bytes:
        records = [
            r
            for r in self._state().vms.values()
            if (query.state is None or r.state == query.state)
            and (query.state is not None or r.state is not m.VmState.DELETED)
            and (query.host is None or r.host == query.host)
        ]
        infos = [self._info(r) for r in records]
        if query.region is not None:
            infos = [info for info in infos if info.region == query.region]
        infos.sort(key=lambda info: info.name)
        return _listed("vms", infos)

    def _hosts(self, now: Now) -> bytes:
        state = self._state()
        remaining = drain.remaining_by_host(state)
        moving = in_flight(state)
        infos = [
            host_info(
                record,
                state.runtimes.get(host),
                state.allocated.get(host),
                len(state.by_host.get(host, ())),
                now.mono_s,
                drain_remaining=remaining.get(host, 0),
                migrations=moving[host],
                disk_used_mib=state.disks.used_mib.get(host, 0),
                replicas=state.disks.replicas_on(host),
            )
            for host, record in sorted(state.hosts.items())
        ]
        return _listed("hosts", infos)


def _listed(key: str, items: Sequence[msgspec.Struct]) -> bytes:
    """A list reply (``VmListReply``, ``HostListReply``, ...) that always holds its list: the
    reply structs omit defaults (an error reply has no list), which made an empty list ``{}``."""
    return codec.encoder.encode({key: items})


def is_read(subject: str) -> bool:
    return subject in (
        subjects.VM_GET,
        subjects.VM_LIST,
        subjects.HOST_LIST,
        subjects.SIZES_LIST,
        subjects.IMAGE_LIST,
        subjects.VNET_GET,
        subjects.VNET_LIST,
    )


def decode_heartbeat(msg: Msg) -> m.Heartbeat | None:
    """A heartbeat, or None (logged) if it is malformed or names another host than its subject."""
    try:
        hb = codec.heartbeat.decode(msg.data)
    except msgspec.DecodeError as exc:
        log.warning("malformed heartbeat subject=%s error=%s", msg.subject, exc)
        return None
    if subjects.host_of_heartbeat(msg.subject) != hb.host_id:
        log.warning("heartbeat names another host subject=%s host_id=%s", msg.subject, hb.host_id)
        return None
    if hb.capacity.cpu_milli < 0 or hb.capacity.mem_mib < 0:
        log.warning("heartbeat with negative capacity subject=%s", msg.subject)
        return None
    HostId(hb.host_id)
    return hb
