"""NATS handlers of the publisher API: decode, validate, then answer reads at once or hand
mutations to the core loop (which answers them after commit). No handler dies on bad input."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

import msgspec
from nats.aio.msg import Msg

from common import codec, list_messages as lm, messages as m, subjects
from common.ids import HostId, VmName, vm_name_problem
from common.migration_messages import MigrateVm
from common.network_messages import ListVnets, VnetRef, VnetReply
from common.paging import DEFAULT_MAX_PAYLOAD, Oversized, PageQuery, after_marker, page_reply
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
    """Answers read-only requests straight from the cluster state (no I/O, no await). Lists are
    paged (common/paging.py): no reply is longer than ``max_reply_bytes()``, the largest
    message the NATS server takes as its connection last said (HTTP reads get the same pages)."""

    def __init__(
        self,
        state: Callable[[], ClusterState],
        sizes: list[m.Size],
        *,
        max_reply_bytes: Callable[[], int] = lambda: DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self._state = state
        self._sizes = sizes
        self._max_reply_bytes = max_reply_bytes

    def answer(self, subject: str, data: bytes, now: Now) -> bytes:
        body = codec.empty_as_object(data)
        try:
            if subject == subjects.VM_GET:
                return self._get(codec.vm_ref.decode(body))
            if subject == subjects.VM_LIST:
                return self._list(codec.list_vms.decode(body))
            if subject == subjects.HOST_LIST:
                return self._hosts(codec.list_hosts.decode(body), now)
            if subject == subjects.IMAGE_LIST:
                query: PageQuery = codec.list_images.decode(body)
                images = listed_images(self._state().images)
                return self._page("images", query, [(i.name, i) for i in images])
            if subject == subjects.SIZES_LIST:
                return self._sizes_page(codec.list_sizes.decode(body))
            if subject == subjects.VNET_GET:
                return self._vnet(codec.vnet_ref.decode(body))
            if subject == subjects.VNET_LIST:
                vnet_query: ListVnets = codec.list_vnets.decode(body)
                vnets = listed_vnets(self._state(), vnet_query.region)
                return self._page("vnets", vnet_query, [(v.name, v) for v in vnets])
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

    def _list(self, query: lm.ListVms) -> bytes:
        names = sorted(self._state().vms)
        return self._cut("vms", query, self._vms(query, names[after_marker(names, query.marker) :]))

    def _vms(self, query: lm.ListVms, names: Sequence[VmName]) -> Iterator[tuple[str, bytes]]:
        """The VMs of a list, in name order, that pass its filters (as far as the page reads)."""
        vms = self._state().vms
        for name in names:
            record = vms[name]
            if query.state is None and record.state is m.VmState.DELETED:
                continue
            if query.state is not None and record.state != query.state:
                continue
            if query.host is not None and record.host != query.host:
                continue
            info = self._info(record)
            if query.region is None or info.region == query.region:
                yield name, codec.encoder.encode(info)

    def _hosts(self, query: lm.ListHosts, now: Now) -> bytes:
        state = self._state()
        remaining = drain.remaining_by_host(state)
        moving = in_flight(state)
        names = sorted(state.hosts)

        def infos() -> Iterator[tuple[str, bytes]]:
            for host in names[after_marker(names, query.marker) :]:
                info = host_info(
                    state.hosts[host],
                    state.runtimes.get(host),
                    state.allocated.get(host),
                    len(state.by_host.get(host, ())),
                    now.mono_s,
                    drain_remaining=remaining.get(host, 0),
                    migrations=moving[host],
                    disk_used_mib=state.disks.used_mib.get(host, 0),
                    replicas=state.disks.replicas_on(host),
                )
                yield host, codec.encoder.encode(info)

        return self._cut("hosts", query, infos())

    def _sizes_page(self, query: lm.ListSizes) -> bytes:
        """Sizes keep the catalogue's order, so their marker must name one of them."""
        names = [size.name for size in self._sizes]
        if query.marker is not None and query.marker not in names:
            return error_reply(m.ErrorCode.INVALID_REQUEST, f"no size {query.marker!r}")
        start = 0 if query.marker is None else names.index(query.marker) + 1
        return self._cut("sizes", query, _encoded((s.name, s) for s in self._sizes[start:]))

    def _page(
        self, key: str, query: PageQuery, items: Sequence[tuple[str, msgspec.Struct]]
    ) -> bytes:
        """A page of a list in name order."""
        start = after_marker([name for name, _ in items], query.marker)
        return self._cut(key, query, _encoded(items[start:]))

    def _cut(self, key: str, query: PageQuery, items: Iterable[tuple[str, bytes]]) -> bytes:
        max_bytes = self._max_reply_bytes()
        reply = page_reply(key, items, limit=query.limit, max_bytes=max_bytes)
        if isinstance(reply, Oversized):
            detail = f"{reply.name!r} alone is larger than a reply may be ({max_bytes} bytes)"
            return error_reply(m.ErrorCode.TOO_LARGE, detail)
        return reply


def _encoded(items: Iterable[tuple[str, msgspec.Struct]]) -> Iterator[tuple[str, bytes]]:
    """Items as JSON, each encoded only when the page reaches it."""
    return ((name, codec.encoder.encode(item)) for name, item in items)


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
