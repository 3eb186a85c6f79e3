"""A VM's disks in the scheduler: ids, where they live, pinning and rebuilding; the attach and
detach operations. Pure.

Every VM gets an OS disk (a qcow2 overlay of its image, made by the agent when the VM first
starts on a host) and the data disks asked for. Replicated disks live in copies on several
hosts (scheduler/core/replicas.py); what follows is about host-local disks. Disks are
host-local: the host they were made on holds them, so a VM that ran once is *pinned* to that
host (stop/start keeps its disks). When
that host is down (or a drain moves the VM off it), the disks are gone with it: the VM is
*rebuilt* — new disk ids, the OS disk from its image again, the data disks empty — and placed
anywhere. Disk ids embed the VM's generation and a serial, so a rebuilt or re-created disk never
reuses an old file. Data disks attach and detach while the VM is stopped (no hot-plug).
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec.structs import replace

from common.fields import ErrorCode
from common.ids import HostId, VmName
from common.messages import (
    AttachDisk,
    DeleteVm,
    DetachDisk,
    DiskKind,
    DiskStorage,
    VmReply,
    VmState,
)
from scheduler.core.context import StepContext
from scheduler.core.views import vm_error
from scheduler.state.model import HostRecord, VmRecord
from scheduler.state.storage import DiskRecord, ImageRecord, mib_of

MAX_DATA_DISKS = 8

EDITABLE_STATES = frozenset({VmState.PENDING, VmState.STOPPED, VmState.FAILED})
"""States in which data disks may be attached or detached (no hot-plug: the VM is not running)."""


def disk_id(name: VmName, generation: int, kind: DiskKind, serial: int) -> str:
    """Unique for the VM's lifetime: ``serial`` counts every disk it was given, and a VM
    created again under the same name starts at a higher generation."""
    return f"{name}-g{generation}-{'os' if kind is DiskKind.OS else 'd'}{serial}"


def initial_disks(
    name: VmName,
    generation: int,
    image: ImageRecord,
    data_mib: list[int],
    storage: DiskStorage = DiskStorage.HOST_LOCAL,
) -> tuple[list[DiskRecord], int]:
    """The OS disk of ``image`` then one data disk per size (none made on a host yet), and
    the disk serial after them."""
    disks = [
        DiskRecord(
            disk_id=disk_id(name, generation, DiskKind.OS, 1),
            kind=DiskKind.OS,
            image=image.name,
            image_sha256=image.sha256,
            storage=storage,
            image_mib=mib_of(image.size_bytes),
        )
    ]
    disks += [
        DiskRecord(
            disk_id=disk_id(name, generation, DiskKind.DATA, serial),
            kind=DiskKind.DATA,
            size_mib=mib,
            storage=storage,
        )
        for serial, mib in enumerate(data_mib, start=2)
    ]
    return disks, len(disks)


def disk_host(record: VmRecord) -> HostId | None:
    """The host holding the VM's host-local disks, if they were made somewhere."""
    return next((disk.host for disk in record.disks if disk.host is not None), None)


def lost_on(record: VmRecord, hosts: Mapping[HostId, HostRecord]) -> HostId | None:
    """The host the VM's disks were lost with: down, unknown, or being drained of the VM."""
    host = disk_host(record)
    if host is None:
        return None
    known = hosts.get(host)
    if known is None or not known.up or record.drained_from == host:
        return host
    return None


def rebuilt(record: VmRecord) -> tuple[list[DiskRecord], int]:
    """New disks for a VM whose disks were lost (the OS disk from its image, data disks empty),
    and the disk serial after them."""
    disks: list[DiskRecord] = []
    serial = record.disk_serial
    for old in record.disks:
        serial += 1
        disks.append(
            DiskRecord(
                disk_id=disk_id(record.name, record.generation, old.kind, serial),
                kind=old.kind,
                size_mib=old.size_mib,
                image=old.image,
                image_sha256=old.image_sha256,
                storage=old.storage,
                image_mib=old.image_mib,
            )
        )
    return disks, serial


def rebuild_reason(record: VmRecord, host: HostId) -> str:
    data = sum(d.kind is DiskKind.DATA for d in record.disks)
    if record.drained_from == host:
        why = f"moved off draining host {host}: host-local disks stay behind"
    else:
        why = f"host-local disks lost with host {host}"
    why += f"; os disk rebuilt from image {record.image}"
    return why + (f", {data} data disk(s) recreated empty" if data else "")


def settled(record: VmRecord, host: HostId) -> list[DiskRecord] | None:
    """The disks once the VM runs on ``host`` (its host-local ones exist there now); None if
    unchanged. Replicated disks live in their copies, never on the VM's host as such."""
    if all(d.host is not None or d.replicated for d in record.disks):
        return None
    return [d if d.replicated else replace(d, host=d.host or host) for d in record.disks]


def attached(record: VmRecord, size_mib: int) -> tuple[list[DiskRecord], int]:
    """The disks with one more empty data disk (stored as the others are: made where the
    host-local ones are, or replicated, its copies placed when the VM is next placed), and the
    serial."""
    serial = record.disk_serial + 1
    storage = record.disks[0].storage if record.disks else DiskStorage.HOST_LOCAL
    disk = DiskRecord(
        disk_id=disk_id(record.name, record.generation, DiskKind.DATA, serial),
        kind=DiskKind.DATA,
        size_mib=size_mib,
        host=disk_host(record),
        storage=storage,
    )
    return [*record.disks, disk], serial


def detached(record: VmRecord, disk_id: str) -> list[DiskRecord] | str:
    """The disks without data disk ``disk_id``, or why it cannot be detached."""
    match = [d for d in record.disks if d.disk_id == disk_id]
    if not match:
        return f"vm {record.name!r} has no disk {disk_id!r}"
    if match[0].kind is DiskKind.OS:
        return "the os disk cannot be detached"
    return [d for d in record.disks if d.disk_id != disk_id]


# --------------------------------------------------------------------------- in a step


def attach_or_detach(ctx: StepContext, body: AttachDisk | DetachDisk) -> VmName | VmReply:
    """Attach or detach a data disk of a VM that is not running."""
    record = ctx.state.vms.get(VmName(body.vm))
    if record is None or record.state is VmState.DELETED:
        return vm_error(ErrorCode.NOT_FOUND, f"vm {body.vm!r} does not exist")
    if record.state not in EDITABLE_STATES:
        return vm_error(
            ErrorCode.INVALID_STATE,
            f"vm {body.vm!r} is {record.state}: stop it to attach or detach disks",
        )
    if isinstance(body, AttachDisk):
        if sum(d.kind is DiskKind.DATA for d in record.disks) >= MAX_DATA_DISKS:
            return vm_error(ErrorCode.INVALID_REQUEST, "a vm has at most 8 data disks")
        new_disks, serial = attached(record, body.size_mib)
        ctx.change_vm(record, disks=new_disks, disk_serial=serial)
    else:
        result = detached(record, body.disk_id)
        if isinstance(result, str):
            return vm_error(ErrorCode.INVALID_REQUEST, result)
        ctx.change_vm(record, disks=result)
    return record.name


def pinned_host(ctx: StepContext, record: VmRecord) -> HostId | None:
    """Where a VM being placed must go (its disks' host), rebuilding disks that were lost."""
    lost = lost_on(record, ctx.state.hosts)
    if lost is not None:
        new_disks, serial = rebuilt(record)
        reason = rebuild_reason(record, lost)
        ctx.change_vm(record, disks=new_disks, disk_serial=serial, reason=reason)
        ctx.emit_vm(record)
    return disk_host(record)


def drop_disks(ctx: StepContext, record: VmRecord) -> None:
    """A VM deleted while not running: its host removes the disks it keeps for it."""
    host = disk_host(record)
    if host is not None and host in ctx.state.hosts and ctx.state.hosts[host].up:
        ctx.send(host, [DeleteVm(name=record.name, generation=record.generation)])
