"""A host's desired replica set, its delivery (level-triggered), and what its heartbeats say
of it. Pure.

What a host should hold is a function of the records: every copy placed on it of a disk of a
VM that is not deleted (``DiskIndex.held``), lost copies included (never deleted by the
scheduler: an operator may want them). A ``filling`` copy names a current copy to copy from.
``ConfigureReplicas`` carries the whole set, named by a digest of its canonical encoding (the
empty set's is "", which is what an agent that applied nothing reports: a host without
replicas is sent nothing).

Delivery, as for networks (hostnets.py): a host whose set changed gets it at the end of the
step (``flush``), ahead of the starts that need it; a heartbeat whose ``replica_digest`` is not
the wanted one gets it again (at most every ``command_retry_s``).

Readiness: a host that reports the wanted digest holds every replica of that set, and those
not in its ``Heartbeat.replicas`` are ready. A replica that becomes ready moves things on: a
filled copy is current, a joining one is sent to its VM's host to be brought in step, and a
VM waiting for its copies is started.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from msgspec.structs import replace

from common import codec
from common.ids import HostId, VmName
from common.messages import AgentCommand, Heartbeat, StartVm, VmState
from common.replica_messages import ConfigureReplicas, ReplicaSpec, ReplicaState, ReplicaStatus
from scheduler.core import replicas
from scheduler.core.context import StepContext
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRuntime, VmRecord
from scheduler.state.storage import CopyRecord, CopyState, DiskRecord


def digest_of(config: ConfigureReplicas) -> str:
    """The digest of ``config`` (its own ``digest`` and ``existing`` left empty): "" for the
    empty set. That a copy was made changes nothing for a host that applied the set."""
    if not config.replicas:
        return ""
    body = codec.encode(replace(config, digest="", existing=[]))
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def _disk(record: VmRecord, disk_id: str) -> DiskRecord:
    return next(d for d in record.disks if d.disk_id == disk_id)


def _spec(
    state: ClusterState, host: HostId, disk_id: str, rebuild_mib_per_s: float
) -> tuple[ReplicaSpec, bool]:
    """What ``host`` holds of disk ``disk_id``, and whether that copy was made."""
    name = state.disks.held[host][disk_id]
    record = state.vms[name]
    disk = _disk(record, disk_id)
    copies = [c for c in disk.copies if c.host == host]
    fill_from = None
    if any(c.state is CopyState.FILLING for c in copies):
        sources = replicas.refs(state, disk.copy_hosts())
        fill_from = sources[0] if sources else None
    made = any(c.made for c in copies)
    return ReplicaSpec(
        disk_id=disk_id,
        vm=name,
        kind=disk.kind.value,
        size_mib=disk.size_mib,
        image=disk.image,
        image_sha256=disk.image_sha256,
        fill_from=fill_from,
        fill_mib_s=rebuild_mib_per_s if fill_from is not None else 0.0,
    ), made


def desired(
    state: ClusterState,
    host: HostId,
    rebuild_mib_per_s: float,
    specs: dict[str, tuple[ReplicaSpec, bool]] | None = None,
    changed: Iterable[str] | None = None,
) -> ConfigureReplicas:
    """The whole replica set ``host`` should hold, from the index (no visit of every VM).
    Given ``specs``, its specs as last computed (kept up to date here), only those of the
    ``changed`` disks are computed again (None: all)."""
    held = state.disks.held.get(host, {})
    if specs is None:
        specs = {}
    if changed is None:
        specs.clear()
        changed = held
    for disk_id in changed:
        if disk_id in held:
            specs[disk_id] = _spec(state, host, disk_id, rebuild_mib_per_s)
        else:
            specs.pop(disk_id, None)
    ordered = sorted(specs)
    config = ConfigureReplicas(
        replicas=[specs[d][0] for d in ordered],
        digest="",
        existing=[d for d in ordered if specs[d][1]],
    )
    config.digest = digest_of(config)
    return config


def wanted(ctx: StepContext, host: HostId) -> ConfigureReplicas:
    """The host's desired set (computed again, for the disks whose copies changed, if any
    did)."""
    disks, carry = ctx.state.disks, ctx.carry
    config = carry.replicas.get(host)
    if config is None or host in disks.dirty_hosts:
        disks.dirty_hosts.discard(host)
        changed: Iterable[str] | None = disks.dirty_disks.pop(host, None)
        specs = carry.replica_specs.get(host)
        if config is None or specs is None:
            specs, changed = carry.replica_specs.setdefault(host, {}), None
        rate = ctx.config.storage.rebuild_mib_per_s
        config = carry.replicas[host] = desired(ctx.state, host, rate, specs, changed)
    return config


def due(ctx: StepContext, host: HostId) -> list[AgentCommand]:
    """The set ``host`` should be sent now, unless it reported having applied it."""
    config = wanted(ctx, host)
    runtime = ctx.state.runtimes.get(host)
    reported = runtime.replica_digest if runtime is not None else ""
    return [] if config.digest == reported else [config]


def unchanged(ctx: StepContext, host: HostId, hb: Heartbeat) -> bool:
    """True when ``heartbeat(ctx, host, hb)`` would change and send nothing: the host reports the
    wanted set applied, as it did last, with every replica ready (a steady heartbeat skips it)."""
    runtime, config = ctx.state.runtimes.get(host), ctx.carry.replicas.get(host)
    return (
        runtime is not None
        and config is not None
        and runtime.replicas_known
        and not hb.replicas
        and not runtime.replicas_unready
        and host not in ctx.state.disks.dirty_hosts
        and hb.replica_digest == config.digest == runtime.replica_digest
        and runtime.replicas_held_digest == config.digest
    )


def heartbeat(ctx: StepContext, host: HostId, hb: Heartbeat) -> None:
    """Take in the replica set ``host`` applied and its replicas not ready; send the wanted
    set if it differs; move on what became ready (or failed). Costs nothing per replica held
    unless the set changed."""
    runtime = ctx.state.runtimes.get(host)
    if runtime is None:
        return
    config = wanted(ctx, host)
    held_before, unready_before = runtime.replicas_held, runtime.replicas_unready
    runtime.replica_digest = hb.replica_digest
    known = runtime.replicas_known
    if hb.replica_digest == config.digest:
        if runtime.replicas_held_digest != config.digest:
            runtime.replicas_held = frozenset(spec.disk_id for spec in config.replicas)
            runtime.replicas_held_digest = config.digest
        known = True
    elif hb.replica_digest == "":
        runtime.replicas_held, runtime.replicas_held_digest = frozenset(), ""
        known = False  # it lost what it had (or never had any): known once it applied ours
    if known != runtime.replicas_known:
        runtime.replicas_known = known
        ctx.state.stale_views.add(host)
        ctx.capacity_changed()  # VMs pending for want of a home for their copies try again
    runtime.replicas_unready = {status.disk_id: status for status in hb.replicas}
    ctx.send(host, due(ctx, host))
    for disk_id in _became_ready_ids(runtime, held_before, unready_before):
        _became_ready(ctx, host, disk_id)
    if hb.replicas:
        _not_ready(ctx, host, hb.replicas)


def _became_ready_ids(
    runtime: HostRuntime, held_before: frozenset[str], unready_before: Mapping[str, object]
) -> list[str]:
    """The replicas ready now that were not before (sorted)."""
    held, unready = runtime.replicas_held, runtime.replicas_unready
    if held is held_before:  # the same set: only those no longer reported not ready
        return sorted(d for d in unready_before if d in held and d not in unready)
    return sorted((held - unready.keys()) - (held_before - unready_before.keys()))


def _copy_on(ctx: StepContext, host: HostId, disk_id: str) -> tuple[VmRecord, CopyRecord] | None:
    name = ctx.state.disks.held.get(host, {}).get(disk_id)
    if name is None:
        return None
    record = ctx.state.vms[name]
    copies = [c for c in _disk(record, disk_id).copies if c.host == host]
    return (record, copies[0]) if copies else None


def _became_ready(ctx: StepContext, host: HostId, disk_id: str) -> None:
    """A copy is made and served: a filled one is current now, a joining one goes to its VM's
    host to be brought in step, and a VM waiting for its copies may start."""
    found = _copy_on(ctx, host, disk_id)
    if found is None:
        return
    record, copy = found
    filled = copy.state is CopyState.FILLING
    if filled or not copy.made:
        state = CopyState.CURRENT if filled else copy.state
        made = replace(copy, state=state, made=True)
        ctx.change_vm(record, disks=replicas.with_copy(record, disk_id, host, made))
    if filled:
        ctx.change_vm(record, reason=replicas.copies_current_reason([(disk_id, host)]))
        ctx.emit_vm(record)
    elif copy.state is CopyState.JOINING:
        replicas.push(ctx, record)
    elif copy.state is CopyState.CURRENT:
        start_if_ready(ctx, record)


def _not_ready(ctx: StepContext, host: HostId, statuses: list[ReplicaStatus]) -> None:
    """Copies its host reports not ready: one that was made and is lost or being made again,
    or one that cannot be made, is dropped (a rebuild makes another); a new VM's copy that
    cannot be made says so in the VM's reason. A VM's copies are dropped together, so that
    no set pushed in between names a copy reported lost in the same report."""
    drops: dict[VmName, tuple[dict[str, set[HostId]], str]] = {}
    for status in statuses:
        found = _copy_on(ctx, host, status.disk_id)
        if found is None:
            continue
        record, copy = found
        why = _why_dropped(host, copy, status)
        if why is not None:
            disks, _ = drops.get(record.name, ({}, ""))
            disks[status.disk_id] = {host}
            drops[record.name] = (disks, why)
        elif status.state is ReplicaState.FILLING and copy.state is CopyState.FILLING:
            replicas.note_progress(ctx, record, status.disk_id, host, status.progress)
        elif status.state is ReplicaState.FAILED and not status.retryable:
            why = f"copy of disk {status.disk_id} on {host} cannot be made: {status.reason}"
            if record.reason != why:
                ctx.change_vm(record, reason=why)
                ctx.emit_vm(record)
    for name, (disks, why) in drops.items():
        record = ctx.state.vms[name]
        replicas.drop_copies(ctx, record, disks)
        if record.state is not VmState.FAILED:
            ctx.change_vm(record, reason=why)
            ctx.emit_vm(record)


def _why_dropped(host: HostId, copy: CopyRecord, status: ReplicaStatus) -> str | None:
    """Why the copy its host reports so is dropped (None: it is not)."""
    disk_id = status.disk_id
    failed = status.state is ReplicaState.FAILED and not status.retryable
    if status.state is ReplicaState.LOST:
        return f"copy of disk {disk_id} on {host} was lost there (its disks were lost or wiped)"
    if copy.made and status.state in (ReplicaState.CREATING, ReplicaState.FILLING):
        return f"copy of disk {disk_id} on {host} was lost there (its host makes it anew)"
    if failed and (copy.made or copy.state is not CopyState.CURRENT):
        return f"copy of disk {disk_id} on {host} failed: {status.reason}"
    return None


def start_if_ready(ctx: StepContext, record: VmRecord) -> None:
    """A VM placed and waiting for its copies: started once they are all ready."""
    host = record.host
    if record.state is not VmState.SCHEDULED or host is None:
        return
    if replicas.ready(ctx.state, record):
        spec = replicas.vm_spec(ctx.state, record)
        ctx.send(host, [StartVm(vm=spec, generation=record.generation)])
        ctx.state.touched_hosts.add(host)


def flush(ctx: StepContext) -> None:
    """Send every up host whose set changed its new one (at the end of a step)."""
    dirty = ctx.state.disks.dirty_hosts
    if not dirty:
        return
    for host in sorted(dirty):
        record = ctx.state.hosts.get(host)
        if record is None or not record.up:
            dirty.discard(host)
            ctx.state.disks.dirty_disks.pop(host, None)
            ctx.carry.replicas.pop(host, None)  # computed again when it is back
            ctx.carry.replica_specs.pop(host, None)
            continue
        ctx.send(host, due(ctx, host))


def hosts_moved(ctx: StepContext) -> None:
    """A host's replica address changed: the sets naming copies to fill from may change."""
    ctx.state.disks.dirty_hosts.update(ctx.state.disks.held)
    ctx.carry.replica_specs.clear()  # every spec computed again (its sources' addresses)
