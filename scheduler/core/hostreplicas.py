"""A host's desired replica set, its delivery as changes (level-triggered), and what its
heartbeats say of it. Pure.

What a host should hold is a function of the records: every copy placed on it of a disk of a
VM that is not deleted (``DiskIndex.held``), lost copies included (a disk's last ones, kept
while they may come back: copyloss.py). A ``filling`` copy names a current copy to copy from.
A set's digest is the sum of per-replica hashes (common/replicaset.py): "" for the empty set,
which is what an agent that applied nothing reports (a host without replicas is sent nothing).

The scheduler keeps what it last sent each host (``Carry.replicas``, a ``ReplicaWant``) and
sends, as for networks (hostnets.py):

- ``ConfigureReplicas``, the whole set, to a host it has no account for (its first replica,
  scheduler restarted, host back up) unless it reports holding it, and to a host that reports
  a digest no update led to (its agent restarted, or it lost or refused an update) or that
  stays on one digest of the way for ``command_retry_s`` (an update was lost);
- else ``UpdateReplicas`` from the digest last sent to the new one, with the replicas added,
  changed and removed: at the end of the step (``flush``), for the disks whose copies changed
  there (``DiskIndex.dirty_disks``), O(those disks).

Readiness: a host that reports a digest holds that set (``HostRuntime.replicas_held``, followed
along the updates that led there, ``ReplicaWant.walk``), and those of its replicas not in its
``Heartbeat.replicas`` are ready. A replica that becomes ready moves things on: a filled copy
is current, a joining one is sent to its VM's host to be brought in step, and a VM waiting for
its copies is started. A settled host's heartbeat (the wanted digest, held, nothing unready)
costs nothing here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from msgspec.structs import replace

from common.ids import HostId, VmName
from common.messages import AgentCommand, Heartbeat, StartVm, VmState
from common.replica_messages import (
    ConfigureReplicas,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    UpdateReplicas,
)
from common.replicaset import ReplicaSet
from scheduler.core import copyloss, copyreports, replicas
from scheduler.core.context import StepContext
from scheduler.core.replicawants import ReplicaWant
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRuntime, VmRecord
from scheduler.state.storage import CopyRecord, CopyState, DiskRecord


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


def build(state: ClusterState, host: HostId, rebuild_mib_per_s: float) -> ReplicaSet:
    """The whole replica set ``host`` should hold, from the index (no visit of every VM)."""
    made = ReplicaSet()
    for disk_id in state.disks.held.get(host, {}):
        spec, existing = _spec(state, host, disk_id, rebuild_mib_per_s)
        made.put(spec)
        if existing:
            made.existing.add(disk_id)
    return made


def desired(state: ClusterState, host: HostId, rebuild_mib_per_s: float) -> ConfigureReplicas:
    """The whole replica set ``host`` should hold now, computed from scratch."""
    return build(state, host, rebuild_mib_per_s).whole()


def _update(
    ctx: StepContext, host: HostId, want: ReplicaWant, disks: Iterable[str]
) -> UpdateReplicas | None:
    """What changed in ``host``'s set through the copies of ``disks`` (None: nothing), applied
    to ``want``. O(those disks)."""
    state, rate = ctx.state, ctx.config.storage.rebuild_mib_per_s
    held = state.disks.held.get(host, {})
    have = want.replicas
    update = UpdateReplicas(base=want.digest, digest="")
    for disk_id in sorted(disks):
        old = have.spec(disk_id)
        if disk_id not in held:
            if old is not None:
                update.removed.append(disk_id)
            continue
        spec, made = _spec(state, host, disk_id, rate)
        if made:  # not part of the digest: sent only with a spec that changed
            have.existing.add(disk_id)
        else:
            have.existing.discard(disk_id)
        if old is None:
            update.added.append(spec)
        elif old != spec:
            update.changed.append(spec)
        else:
            continue
        if made:
            update.existing.append(disk_id)
    if not (update.added or update.changed or update.removed):
        return None
    have.apply(update)
    update.digest = want.digest
    want.passed(update)
    return update


def due(ctx: StepContext, host: HostId) -> list[AgentCommand]:
    """What ``host`` should be sent now about its replicas: the whole set if there is no
    account of what it has (unless it reports having it), the changes if its copies changed,
    else nothing: [] or [it]."""
    state, carry = ctx.state, ctx.carry
    disks = state.disks
    want = carry.replicas.get(host)
    if want is None:
        disks.dirty_hosts.discard(host)
        disks.dirty_disks.pop(host, None)
        disks.made_changed.pop(host, None)
        rate = ctx.config.storage.rebuild_mib_per_s
        want = carry.replicas[host] = ReplicaWant.of(build(state, host, rate))
        runtime = state.runtimes.get(host)
        reported = runtime.replica_digest if runtime is not None else ""
        return [] if want.digest == reported else [want.whole(ctx.now.mono_s)]
    _take_made(ctx, host, want)
    if host in disks.dirty_hosts:
        disks.dirty_hosts.discard(host)
        update = _update(ctx, host, want, disks.dirty_disks.pop(host, ()))
        if update is not None:
            return [update]
    return []


def _take_made(ctx: StepContext, host: HostId, want: ReplicaWant) -> None:
    """Copies of ``host`` of which only whether they were made changed: in the set as last
    sent (``existing``, sent with the whole set), no update (their specs are the same)."""
    changed = ctx.state.disks.made_changed.pop(host, None)
    if not changed:
        return
    existing, specs = want.replicas.existing, want.replicas.specs
    for disk_id, made in changed.items():
        if made and disk_id in specs:
            existing.add(disk_id)
        else:
            existing.discard(disk_id)


def _settled(runtime: HostRuntime, want: ReplicaWant | None, hb: Heartbeat) -> bool:
    """The host holds the wanted set, as known, and nothing of it is not ready."""
    return (
        want is not None
        and hb.replica_digest == want.digest == runtime.replicas_held_digest
        and not hb.replicas
        and not runtime.replicas_unready
    )


def unchanged(ctx: StepContext, host: HostId, hb: Heartbeat, runtime: HostRuntime) -> bool:
    """True when ``heartbeat(ctx, host, hb)`` would change and send nothing: the host reports the
    wanted set applied, as it did last, with every replica ready (a steady heartbeat skips it)."""
    if not runtime.replicas_known or hb.replicas or runtime.replicas_unready:
        return False
    config = ctx.carry.replicas.get(host)
    if config is None or host in ctx.state.disks.dirty_hosts:
        return False
    wanted = config.replicas.digest
    return hb.replica_digest == wanted == runtime.replica_digest == runtime.replicas_held_digest


def heartbeat(ctx: StepContext, host: HostId, hb: Heartbeat) -> None:
    """Take in the replica set ``host`` applied and its replicas not ready; send the whole set
    when the host is not on its way to the wanted one; move on what became ready (or failed).
    Costs nothing per replica held: O(the updates it applied since its last report)."""
    runtime = ctx.state.runtimes.get(host)
    if runtime is None:
        return
    want = ctx.carry.replicas.get(host)
    dirty = host in ctx.state.disks.dirty_hosts
    if not dirty and _settled(runtime, want, hb):
        runtime.replica_digest = hb.replica_digest
        return
    runtime.replica_digest = reported = hb.replica_digest
    served = _served(runtime, hb.replicas)
    commands = due(ctx, host) if want is None or dirty else []
    want = ctx.carry.replicas[host]
    _take_made(ctx, host, want)
    unready_before = runtime.replicas_unready
    runtime.replicas_unready = {status.disk_id: status for status in hb.replicas}
    gained = _take_held(runtime, want, reported)
    known = runtime.replicas_known if gained is None else True
    if gained is None and reported == "":
        known = False  # it lost what it had (or never had any): known once it applied ours
    if known != runtime.replicas_known:
        runtime.replicas_known = known
        ctx.state.stale_views.add(host)
        ctx.capacity_changed()  # VMs pending for want of a home for their copies try again
    ctx.send(host, commands or _again(ctx, want, reported, on_trail=gained is not None))
    for disk_id in _became_ready_ids(runtime, gained or [], unready_before):
        _became_ready(ctx, host, disk_id)
    if hb.replicas:
        _not_ready(ctx, host, hb.replicas, served)


def _served(runtime: HostRuntime, statuses: list[ReplicaStatus]) -> set[str]:
    """Of the replicas reported not ready, those that were ready at the host's last report."""
    held, unready = runtime.replicas_held, runtime.replicas_unready
    return {s.disk_id for s in statuses if s.disk_id in held and s.disk_id not in unready}


def _take_held(runtime: HostRuntime, want: ReplicaWant, reported: str) -> list[str] | None:
    """The host holds the set ``reported`` names: its disk ids in ``runtime.replicas_held``;
    those it gained. None: no update led there (what it holds is not known)."""
    gained = want.walk(runtime.replicas_held, runtime.replicas_held_digest, reported)
    if gained is not None:
        runtime.replicas_held_digest = reported
    elif reported == "":
        runtime.replicas_held.clear()
        runtime.replicas_held_digest = ""
    return gained


def _again(
    ctx: StepContext, want: ReplicaWant, reported: str, *, on_trail: bool
) -> list[AgentCommand]:
    """The whole set, if the host is not on its way to the wanted one: it reports a digest no
    update led to (unless the whole went less than ``command_retry_s`` ago), or one on the way
    for ``command_retry_s`` (an update was lost, or refused)."""
    now_s, retry_s = ctx.now.mono_s, ctx.config.command_retry_s
    if reported == want.digest:
        want.reported = None
        return []
    if reported != want.reported:
        want.reported, want.reported_since_s = reported, now_s
    since_s = want.reported_since_s if on_trail else want.whole_sent_s
    if now_s - since_s < retry_s:
        return []
    return [want.whole(now_s)]


def _became_ready_ids(
    runtime: HostRuntime, gained: list[str], unready_before: Mapping[str, object]
) -> list[str]:
    """The replicas ready now that were not before (sorted): those just held and not unready,
    and those no longer reported not ready."""
    held, unready = runtime.replicas_held, runtime.replicas_unready
    ready = {d for d in gained if d not in unready}
    ready.update(d for d in unready_before if d in held and d not in unready)
    return sorted(ready)


def _copy_on(ctx: StepContext, host: HostId, disk_id: str) -> tuple[VmRecord, CopyRecord] | None:
    name = ctx.state.disks.held.get(host, {}).get(disk_id)
    if name is None:
        return None
    record = ctx.state.vms[name]
    copies = [c for c in _disk(record, disk_id).copies if c.host == host]
    return (record, copies[0]) if copies else None


def _became_ready(ctx: StepContext, host: HostId, disk_id: str) -> None:
    """A copy is made and served: a filled one is current now, a joining one goes to its VM's
    host to be brought in step, a lost one is back, and a VM waiting for its copies may
    start."""
    found = _copy_on(ctx, host, disk_id)
    if found is None:
        return
    record, copy = found
    if copy.state is CopyState.LOST:
        copyloss.revive(ctx, record, disk_id, host)
        return
    if copy.state is CopyState.CURRENT:
        start_if_ready(ctx, record)  # recorded made when the VM is started with it
        return
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


def _not_ready(
    ctx: StepContext, host: HostId, statuses: list[ReplicaStatus], served: set[str]
) -> None:
    """Copies its host reports not ready: one that was made (or ``served``: ready before) and
    is lost or being made again, or one that cannot be made, is dropped (a rebuild makes
    another); a new VM's copy that cannot be made says so in the VM's reason. A VM's copies
    are dropped together, so that no set pushed in between names a copy reported lost in the
    same report."""
    drops: dict[VmName, tuple[dict[str, set[HostId]], str]] = {}
    for status in statuses:
        found = _copy_on(ctx, host, status.disk_id)
        if found is None:
            continue
        record, copy = found
        if copy.state is CopyState.LOST:
            copyloss.settle(ctx, record)  # it may not come back: its VM may fail now
            continue
        if status.disk_id in served and not copy.made:  # made when it was first served
            copy = replace(copy, made=True)
            ctx.change_vm(record, disks=replicas.with_copy(record, status.disk_id, host, copy))
        why = _why_dropped(host, copy, status)
        if why is not None:
            disks, _ = drops.get(record.name, ({}, ""))
            disks[status.disk_id] = {host}
            drops[record.name] = (disks, why)
        elif status.state is ReplicaState.FILLING and copy.state is CopyState.FILLING:
            copyreports.note_progress(ctx, record, status.disk_id, host, status.progress)
        elif status.state is ReplicaState.FAILED and not status.retryable:
            why = f"copy of disk {status.disk_id} on {host} cannot be made: {status.reason}"
            if record.reason != why:
                ctx.change_vm(record, reason=why)
                ctx.emit_vm(record)
    for name, (disks, why) in drops.items():
        record = ctx.state.vms[name]
        copyloss.drop_copies(ctx, record, disks)
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
        replicas.mark_made(ctx, record)
        spec = replicas.vm_spec(ctx.state, record)
        ctx.send(host, [StartVm(vm=spec, generation=record.generation)])
        ctx.state.touched_hosts.add(host)


def flush(ctx: StepContext) -> None:
    """Send every up host whose set changed its new one (at the end of a step)."""
    made = ctx.state.disks.made_changed
    for host in list(made):
        want = ctx.carry.replicas.get(host)
        if want is None:
            made.pop(host)  # computed whole when it is next sent
        else:
            _take_made(ctx, host, want)
    dirty = ctx.state.disks.dirty_hosts
    if not dirty:
        return
    for host in sorted(dirty):
        record = ctx.state.hosts.get(host)
        if record is None or not record.up:
            dirty.discard(host)
            ctx.state.disks.dirty_disks.pop(host, None)
            ctx.carry.replicas.pop(host, None)  # computed again when it is back
            continue
        ctx.send(host, due(ctx, host))


def hosts_moved(ctx: StepContext) -> None:
    """A host's replica address changed: the sets naming copies to fill from may change."""
    disks = ctx.state.disks
    for host, held in disks.held.items():  # every spec computed again (its sources' addresses)
        disks.dirty_hosts.add(host)
        disks.dirty_disks.setdefault(host, set()).update(held)
