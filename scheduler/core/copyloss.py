"""Copies lost, and a disk whose every current copy is gone: down (waiting for one to come
back) or lost for good. Pure.

- **A copy is dropped** when its host is declared dead (``hosts_lost``), when the VM's host
  reports it failed a write, or when its own host reports it lost or made anew
  (hostreplicas.py). The others stay current: the guest's writes go on to them.
- **The last current copies** of a disk are never dropped: they are kept, ``lost``. Each of
  them has every write the guest was told is done, since a write is acknowledged only once
  every current copy has it and nothing writes to a disk without a current copy. A copy that
  was being made (filling, joining) is dropped with them: it may lack writes.
- **Down, not failed.** A host declared dead after a stall (a late heartbeat, a cut link)
  still holds its copies. So a VM whose disk has only lost copies is not failed while one of
  them may come back: it waits, ``pending`` (taken off its host, which cannot write to the
  disk), with the reason ``DOWN``. Its placement does not time out meanwhile.
- **Back.** A lost copy that its host (up again) reports held and ready is current again,
  and the disk's other lost copies are dropped: the VM may write to this one from now on,
  so they are behind. The VM is placed again (preferring that host) and a rebuild makes the
  copies it lacks.
- **Lost for good.** When every lost copy's host is up, has told what it holds, and holds
  no ready copy (its disks were wiped, or it made the copy anew), or is no longer known, the
  VM is ``failed`` ("every replica of disk X lost"). The lost copies stay in its record, so
  that it never gets new empty copies; a VM failed so starts again only if one comes back.
"""

from __future__ import annotations

from msgspec.structs import replace

from common.ids import HostId
from common.messages import VmState
from scheduler.core import lifecycle, migration_flow, replicas
from scheduler.core.context import StepContext
from scheduler.state.cluster import ClusterState
from scheduler.state.model import VmRecord
from scheduler.state.storage import CopyState, DiskRecord

DOWN = "waiting for a copy of disk"
"""How the reason of a VM waiting for a lost copy's host to come back begins."""


def down_reason(state: ClusterState, disk: DiskRecord) -> str:
    hosts = ", ".join(sorted(c.host for c in disk.copies if _may_return(state, c.host)))
    return f"{DOWN} {disk.disk_id}: every host holding one is down ({hosts})"


def hosts_lost(ctx: StepContext, hosts: list[HostId]) -> None:
    """``hosts`` were declared dead: their copies are dropped (in this step's records), but the
    last current ones of a disk, kept lost."""
    gone = set(hosts)
    names = {name for host in hosts for name in ctx.state.disks.held.get(host, {}).values()}
    for name in sorted(names):
        record = ctx.state.vms[name]
        drop_copies(ctx, record, {disk.disk_id: gone for disk in record.disks})


def drop_copies(ctx: StepContext, record: VmRecord, dropped: dict[str, set[HostId]]) -> None:
    """Drop the copies of ``dropped`` (disk id -> hosts) from the VM's disks; a disk left
    without a current copy keeps its last current ones, lost, and the VM waits for one (or
    fails). A running VM's host is sent the smaller sets."""
    disks, down = [], None
    for disk in record.disks:
        gone = dropped.get(disk.disk_id, set())
        if not disk.replicated or not any(c.host in gone for c in disk.copies):
            disks.append(disk)
            continue
        kept = [c for c in disk.copies if c.host not in gone]
        if not any(c.state is CopyState.CURRENT for c in kept):
            kept = [
                replace(c, state=CopyState.LOST)
                for c in disk.copies
                if c.state in (CopyState.CURRENT, CopyState.LOST)
            ]
            down = down or disk
        disks.append(replace(disk, copies=kept))
    if disks == record.disks:
        return
    ctx.change_vm(record, disks=disks)
    if down is not None:
        settle(ctx, record)
    else:
        replicas.push(ctx, record)


def _may_return(state: ClusterState, host: HostId) -> bool:
    """A lost copy's host may still give it back: it is down, or up and has not told yet
    what it holds."""
    record, runtime = state.hosts.get(host), state.runtimes.get(host)
    if record is None:
        return False
    return not record.up or runtime is None or not runtime.replicas_known


def gone_for_good(state: ClusterState, disk: DiskRecord) -> bool:
    """No lost copy of the disk can come back (nor is one ready now)."""
    return not any(
        _may_return(state, c.host) or replicas.copy_ready(state, c.host, disk.disk_id)
        for c in disk.copies
    )


def recover(ctx: StepContext, record: VmRecord) -> DiskRecord | None:
    """Bring back the lost copies of the VM's disks that their hosts serve again; the first
    disk still without a current copy (None: every disk has one)."""
    for disk in record.disks:
        if not disk.replicated or not disk.copies or disk.copy_hosts():
            continue
        back = [c.host for c in disk.copies if replicas.copy_ready(ctx.state, c.host, disk.disk_id)]
        if back:
            revive(ctx, record, disk.disk_id, min(back))
    return replicas.every_copy_lost(record)


def revive(ctx: StepContext, record: VmRecord, disk_id: str, host: HostId) -> None:
    """``host`` serves its lost copy of the disk again: it is the disk's one current copy (its
    other lost copies, behind from now on, are dropped), and the VM may be placed again."""
    disk = next(d for d in record.disks if d.disk_id == disk_id)
    copy = next(c for c in disk.copies if c.host == host)
    if copy.state is not CopyState.LOST or disk.copy_hosts():
        return
    back = replace(copy, state=CopyState.CURRENT)
    disks = [replace(d, copies=[back]) if d.disk_id == disk_id else d for d in record.disks]
    ctx.change_vm(record, disks=disks, reason=f"copy of disk {disk_id} on {host} is back")
    ctx.emit_vm(record)
    if record.state is VmState.PENDING:
        ctx.want_placement(record.name)


def placeable(ctx: StepContext, record: VmRecord) -> bool:
    """Every disk of the pending VM has a current copy (lost ones back, if their hosts serve
    them again); if not, it waits for one, or fails."""
    return replicas.every_copy_lost(record) is None or settle(ctx, record) is None


def settle(ctx: StepContext, record: VmRecord) -> DiskRecord | None:
    """A disk of the VM has no current copy: the VM waits off its host while a lost copy may
    come back, else fails (never run from an empty disk or the image). A stopped VM stays
    stopped, and says why. The disk still without a current copy (None: none is)."""
    disk = recover(ctx, record)
    if disk is None:
        return None
    if gone_for_good(ctx.state, disk):
        why, state = replicas.lost_reason(disk), VmState.FAILED
    else:
        why, state = down_reason(ctx.state, disk), VmState.PENDING
    if record.state in (VmState.SCHEDULED, VmState.STARTING, VmState.RUNNING):
        migration_flow.abandon(ctx, record, why)
        lifecycle.release(ctx, record, state, why)
    elif record.state is VmState.PENDING and state is VmState.FAILED:
        ctx.change_vm(record, state=state, reason=why, recovering=False)
    elif record.reason != why:
        ctx.change_vm(record, reason=why)
        ctx.emit_vm(record)
    return disk
