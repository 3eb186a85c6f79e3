"""Rebuilds: every replicated disk with fewer live copies than ``storage.replicas`` gets a new
copy, in the background, a few at a time. Pure.

At each tick, for the VMs one of whose disks is short (``DiskIndex.short_of``: no scan of
every VM), each short disk that still has a current copy gets one new copy on the best host
of a fault domain none of its copies is in (scheduler/placement/copies.py), that does not
still hold an old copy of the disk:

- the VM runs: the copy is ``joining``: its host makes it empty (or over the image) and, once
  it reports it ready, the VM's host is told to bring it in step (``SetDiskReplicas.joining``,
  a mirror in write-blocking mode); it is current once the VM reports it in sync;
- the VM does not run (stopped, failed): the copy is ``filling``: its host copies a current
  copy (``ReplicaSpec.fill_from``) and it is current once the host reports it ready.

A VM neither running nor stopped (being placed, started, stopped, migrated) waits: its
unfinished copies are dropped when it is placed. At most ``max_rebuilds_per_host`` copies are
made at once onto one host, or from it (the VM's host runs the mirror; a fill reads from its
source), and each at ``rebuild_mib_per_s`` (told to the agents).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace as with_fields

from msgspec.structs import replace

from common.ids import HostId
from common.messages import VmState
from scheduler.core import replicas
from scheduler.core.context import StepContext
from scheduler.placement.copies import CopyIndex, CopyRequest
from scheduler.state.model import VmRecord
from scheduler.state.storage import CopyRecord, CopyState, DiskRecord

_TRIES = 4
"""Hosts skipped for a copy because they still hold an old copy of the disk."""


def mode_of(ctx: StepContext, record: VmRecord) -> CopyState | None:
    """How a new copy of the VM's disks is made now (None: not now)."""
    if replicas.every_copy_lost(record) is not None:
        return None
    if record.state is VmState.RUNNING and record.migration is None:
        running = replicas.running_on(ctx.state, record)
        return CopyState.JOINING if running is not None else None
    if record.state in (VmState.STOPPED, VmState.FAILED):
        return CopyState.FILLING
    return None


def rebuild(ctx: StepContext) -> None:
    """Start new copies of the short disks, within the per-host limit."""
    state = ctx.state
    wanted = ctx.config.storage.replicas
    short = state.disks.short_of(wanted)
    if not short:
        return
    busy: Counter[HostId] = Counter(state.disks.making)
    index = ctx.views.copies()
    for name in short:
        record = state.vms[name]
        mode = mode_of(ctx, record)
        if mode is None:
            continue
        disks, started = [], []
        for disk in record.disks:
            copy = _new_copy(ctx, record, disk, mode, busy, index) if disk.replicated else None
            if copy is not None:
                disk = replace(disk, copies=[*disk.copies, copy])
                started.append(f"{disk.disk_id} on {copy.host}")
            disks.append(disk)
        if started:
            why = f"{replicas.COPY_STARTED} {'; '.join(started)}"
            ctx.change_vm(record, disks=disks, reason=why)
            ctx.emit_vm(record)


def _new_copy(
    ctx: StepContext,
    record: VmRecord,
    disk: DiskRecord,
    mode: CopyState,
    busy: Counter[HostId],
    index: CopyIndex,
) -> CopyRecord | None:
    """A new copy of ``disk`` if it is short and a host can make it now."""
    state, limit = ctx.state, ctx.config.storage.max_rebuilds_per_host
    live = [c for c in disk.copies if c.state is not CopyState.LOST]
    current = disk.copy_hosts()
    if len(live) >= ctx.config.storage.replicas or not current:
        return None
    source = record.host if mode is CopyState.JOINING else current[0]
    if source is None or busy[source] >= limit:
        return None
    avoid = {host for host, count in busy.items() if count >= limit}
    request = CopyRequest(
        count=1,
        disk_mib=disk.charged_mib,
        region=state.hosts[current[0]].region,
        taken_domains=frozenset(state.hosts[c.host].fault_domain for c in live),
    )
    for _ in range(_TRIES):
        chosen = index.choose(with_fields(request, avoid=frozenset(avoid)))
        if chosen is None:
            return None
        host = chosen[0]
        runtime = state.runtimes.get(host)
        if runtime is None or disk.disk_id not in runtime.replicas_held:
            busy[host] += 1
            busy[source] += 1
            index.reserve(host, disk.charged_mib)
            return CopyRecord(host=host, state=mode)
        avoid.add(host)  # it still holds an old copy: deleted first
    return None
