"""What a running VM's host reports of its replicated disks' copies: the ones it writes to
(in step), the ones it brings in step (joining, with their progress) and the ones that failed a
write. Pure.

A copy the VM reports in step that was joining is current from then on; a current copy the VM
no longer writes to, or one that failed, is dropped (copyloss.py: the last current ones are
kept, lost); a VM whose copies differ from the records' is sent its sets again. A steady VM
(writing to exactly its current copies) costs one comparison per disk.
"""

from __future__ import annotations

from msgspec.structs import replace

from common.ids import HostId, VmName
from common.messages import ObservedState, ObservedVm, VmState
from common.replica_messages import DiskReplicas
from scheduler.core import copyloss, replicas
from scheduler.core.context import StepContext
from scheduler.state.model import VmRecord
from scheduler.state.storage import CopyState


def observe(ctx: StepContext, host: HostId, observed: dict[VmName, ObservedVm]) -> None:
    """Take in what ``host`` reports of its VMs' replicated disks: failed copies dropped,
    joined ones current, and the sets sent again where the VM's differ from the records'."""
    for name, seen in observed.items():
        if not seen.disks or seen.state is not ObservedState.RUNNING:
            continue
        record = ctx.state.vms.get(name)
        if record is None or record.host != host or record.generation != seen.generation:
            continue
        if record.state is not VmState.RUNNING or record.migration is not None:
            continue
        if not _steady(record, seen.disks):
            _observe_vm(ctx, record, seen.disks)


def _steady(record: VmRecord, reports: list[DiskReplicas]) -> bool:
    """The VM writes to exactly its disks' copies, all current, none joining or failed: as
    every running VM does but while a copy changes (nothing to take in). A report of each
    replicated disk is what it costs, at each look at the host's VMs."""
    replicated = [disk for disk in record.disks if disk.replicated]
    if len(replicated) != len(reports):
        return False
    for disk, report in zip(replicated, reports, strict=True):
        if report.disk_id != disk.disk_id or report.joining or report.failed:
            return False
        copies = disk.copies
        if len(copies) != len(report.in_sync):
            return False
        for copy in copies:
            if copy.state is not CopyState.CURRENT or copy.host not in report.in_sync:
                return False
    return True


PROGRESS_STEP = 0.05
"""A copy's progress is stored (and its VM's event sent) each time it moved this far."""


def note_progress(
    ctx: StepContext, record: VmRecord, disk_id: str, host: HostId, progress: float
) -> None:
    """A copy being made (filling or joining) moved on: kept in its record and told in an
    event once it moved by ``PROGRESS_STEP`` (so that a rebuild shows how far it is)."""
    progress = min(max(progress, 0.0), 1.0)
    disk = next((d for d in record.disks if d.disk_id == disk_id), None)
    copy = next((c for c in disk.copies if c.host == host), None) if disk else None
    if copy is None or copy.state not in (CopyState.FILLING, CopyState.JOINING):
        return
    if abs(progress - copy.progress) < PROGRESS_STEP:
        return
    moved = replace(copy, progress=progress)
    disks = replicas.with_copy(record, disk_id, host, moved)
    how = "being filled" if moved.state is CopyState.FILLING else "being brought in step"
    why = f"copy of disk {disk_id} on {host} {how}: {progress:.0%}"
    ctx.change_vm(record, disks=disks, reason=why)
    ctx.emit_vm(record)


def _observe_vm(ctx: StepContext, record: VmRecord, reports: list[DiskReplicas]) -> None:
    by_disk = {report.disk_id: report for report in reports}
    for shown in reports:
        for joining, progress in shown.joining.items():
            note_progress(ctx, record, shown.disk_id, HostId(joining), progress)
    dropped: dict[str, set[HostId]] = {}
    joined: dict[str, set[HostId]] = {}
    differs = False
    for disk in record.disks:
        report = by_disk.get(disk.disk_id)
        if report is None or not disk.replicated:
            continue
        in_sync = {HostId(h) for h in report.in_sync}
        failed = {HostId(h) for h in report.failed}
        current = set(disk.copy_hosts())
        # A current copy the VM does not write to is not current (nor is a failed one).
        dropped[disk.disk_id] = (current - in_sync) | (failed & {c.host for c in disk.copies})
        joined[disk.disk_id] = in_sync & set(disk.copy_hosts(CopyState.JOINING))
        ready_joining = {
            h
            for h in disk.copy_hosts(CopyState.JOINING)
            if replicas.copy_ready(ctx.state, h, disk.disk_id)
        }
        expected = current - dropped[disk.disk_id]
        differs = differs or bool(failed) or in_sync - joined[disk.disk_id] != expected
        differs = differs or not ready_joining <= set(report.joining) | in_sync
    if any(joined.values()):
        _joined(ctx, record, joined)
    if any(dropped.values()):
        copyloss.drop_copies(ctx, record, dropped)  # pushes the smaller sets
    elif differs:
        replicas.push(ctx, record)


def _joined(ctx: StepContext, record: VmRecord, joined: dict[str, set[HostId]]) -> None:
    """Copies the VM now writes to, in step: current."""
    disks = []
    for disk in record.disks:
        hosts = joined.get(disk.disk_id, set())
        if hosts:
            copies = [
                replace(c, state=CopyState.CURRENT) if c.host in hosts else c for c in disk.copies
            ]
            disk = replace(disk, copies=copies)
        disks.append(disk)
    done = [(disk, host) for disk, hosts in sorted(joined.items()) for host in sorted(hosts)]
    ctx.change_vm(record, disks=disks, reason=replicas.copies_current_reason(done))
    ctx.emit_vm(record)
