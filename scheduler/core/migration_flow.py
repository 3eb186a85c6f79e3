"""Live migration, after it began: the hosts' reports move each attempt on, through the
switchover, to its end (scheduler/core/migrations.py describes the phases). Pure.

Called from a heartbeat's reconcile (``observe``), a tick (``check_timeouts``), a host's death
(``target_down``, ``abandon``) and a stop or delete of a migrating VM (``abandon``).
"""

from __future__ import annotations

from msgspec.structs import replace

from common.ids import HostId, VmName
from common.messages import (
    AgentCommand,
    DeleteVm,
    MigrationOutcome,
    ObservedState,
    ObservedVm,
    PrepareIncoming,
    VmState,
)
from common.migration_messages import (
    CancelMigration,
    FinishIncoming,
    MigrateOut,
    MigrationPhase,
    MigrationReport,
    MigrationStatus,
)
from scheduler.core import hostnets, lifecycle, networks, replicas
from scheduler.core.context import StepContext
from scheduler.state.model import MigrationRecord, VmRecord

Phase = MigrationPhase

# --------------------------------------------------------------------------- commands


def prepare(ctx: StepContext, record: VmRecord, migration: MigrationRecord) -> None:
    """The destination's networks first (the incoming VM's NICs attach to them), then the VM."""
    target = migration.target
    config = hostnets.due(ctx, target)
    prepare = PrepareIncoming(
        vm=replicas.vm_spec(ctx.state, record, own=target),
        generation=migration.attempt,
        source=migration.source,
    )
    ctx.send(target, [*config, prepare])


def _migrate_out(ctx: StepContext, record: VmRecord, migration: MigrationRecord) -> None:
    command = MigrateOut(
        name=record.name,
        generation=record.generation,
        target=migration.target,
        target_generation=migration.attempt,
        address=migration.address,
        migration_port=migration.migration_port,
        nbd_port=migration.nbd_port,
        max_downtime_ms=ctx.config.migration_max_downtime_ms,
        max_bandwidth_mib_s=ctx.config.migration_max_bandwidth_mib_s,
    )
    ctx.send(migration.source, [command])


def _cancel_out(ctx: StepContext, record: VmRecord, migration: MigrationRecord) -> None:
    source = ctx.state.hosts.get(migration.source)
    if source is None or not source.up:
        return
    command = CancelMigration(
        name=record.name, generation=record.generation, target_generation=migration.attempt
    )
    ctx.send(migration.source, [command])


def _destroy_incoming(ctx: StepContext, name: VmName, migration: MigrationRecord) -> None:
    """Destroy the destination's copy (and its disks) of an attempt that ended."""
    host = ctx.state.hosts.get(migration.target)
    if host is not None and host.up:
        delete: AgentCommand = DeleteVm(name=name, generation=migration.attempt)
        ctx.send(migration.target, [delete])
        # Until the destination reports the copy gone, it still holds the VM's resources there:
        # counted as an orphan's (its next report recomputes them), so that nothing is placed
        # into them while the copy is being destroyed.
        runtime = ctx.state.runtimes.get(migration.target)
        if runtime is not None:
            runtime.orphaned = runtime.orphaned + ctx.state.vms[name].resources
            ctx.state.stale_views.add(migration.target)


# --------------------------------------------------------------------------- the reports


def observe(ctx: StepContext, host: HostId, observed: dict[VmName, ObservedVm]) -> bool:
    """Move on every migration ``host`` takes part in, from its inventory; True while any
    needs its reports (the host's reconcile is not settled then)."""
    state = ctx.state
    names = [
        name
        for name in state.migrating
        if (m := state.vms[name].migration) is not None and host in (m.source, m.target)
    ]
    for name in names:
        _follow(ctx, state.vms[name], host, observed.get(name))
    return bool(names)


def _report(seen: ObservedVm | None, generation: int, attempt: int) -> MigrationReport | None:
    if seen is None or seen.generation != generation:
        return None
    report = seen.migration
    return report if report is not None and report.attempt == attempt else None


def _follow(ctx: StepContext, record: VmRecord, host: HostId, seen: ObservedVm | None) -> None:
    migration = record.migration
    assert migration is not None
    if record.state is not VmState.RUNNING:
        _end(ctx, record, f"the vm is {record.state} ({record.reason})")
        return
    on_source = host == migration.source
    match migration.phase:
        case Phase.PREPARING:
            if not on_source:
                _preparing(ctx, record, migration, seen)
        case Phase.COPYING:
            if on_source:
                _copying(ctx, record, migration, seen)
            else:
                _target_copying(ctx, record, migration, seen)
        case Phase.SWITCHING:
            if not on_source:
                _switching(ctx, record, migration, seen)
        case Phase.CANCELLING:
            if on_source:
                _cancelling(ctx, record, migration, seen)


def _target_failure(seen: ObservedVm | None, attempt: int) -> str | None:
    """Why the destination's copy of the attempt failed, or None if it did not."""
    if seen is None or seen.generation != attempt:
        return None
    report = _report(seen, attempt, attempt)
    if report is not None and report.status is MigrationStatus.FAILED:
        return report.detail or "failed"
    if seen.state is ObservedState.FAILED:
        return seen.reason or "failed"
    return None


def _preparing(
    ctx: StepContext, record: VmRecord, migration: MigrationRecord, seen: ObservedVm | None
) -> None:
    attempt = migration.attempt
    failure = _target_failure(seen, attempt)
    report = _report(seen, attempt, attempt)
    if failure is not None:
        cancel(ctx, record, f"destination {migration.target} failed: {failure}")
    elif (
        seen is not None
        and seen.state is ObservedState.INCOMING
        and report is not None
        and report.status is MigrationStatus.READY
    ):
        copying = replace(
            migration,
            phase=Phase.COPYING,
            progress_at=ctx.now.wall,
            address=report.address,
            migration_port=report.migration_port,
            nbd_port=report.nbd_port,
        )
        ctx.change_vm(record, migration=copying)
        _migrate_out(ctx, record, copying)
    else:
        prepare(ctx, record, migration)


def _target_copying(
    ctx: StepContext, record: VmRecord, migration: MigrationRecord, seen: ObservedVm | None
) -> None:
    failure = _target_failure(seen, migration.attempt)
    if seen is None or seen.generation != migration.attempt:
        failure = "its copy of the vm is gone"
    if failure is not None:
        cancel(ctx, record, f"destination {migration.target}: {failure}")


def _copying(
    ctx: StepContext, record: VmRecord, migration: MigrationRecord, seen: ObservedVm | None
) -> None:
    report = _report(seen, record.generation, migration.attempt)
    if seen is None or seen.generation != record.generation:
        _end(ctx, record, f"the vm is gone from {migration.source}")
    elif seen.state is ObservedState.HANDED_OVER or (
        report is not None and report.status is MigrationStatus.SENT
    ):
        _switch(ctx, record, migration)
    elif report is not None and report.status is MigrationStatus.FAILED:
        _end(ctx, record, report.detail or "the source failed")
    else:
        if report is not None and report.status is MigrationStatus.SENDING:
            _progress(ctx, record, migration, report)
        _migrate_out(ctx, record, migration)


def _progress(
    ctx: StepContext, record: VmRecord, migration: MigrationRecord, report: MigrationReport
) -> None:
    moved = (report.transferred_mib, report.total_mib)
    if moved == (migration.transferred_mib, migration.total_mib):
        return
    progress_at = ctx.now.wall if report.transferred_mib != migration.transferred_mib else None
    updated = replace(
        migration,
        transferred_mib=report.transferred_mib,
        total_mib=report.total_mib,
        progress_at=progress_at or migration.progress_at,
    )
    ctx.change_vm(record, migration=updated)


def _switching(
    ctx: StepContext, record: VmRecord, migration: MigrationRecord, seen: ObservedVm | None
) -> None:
    if seen is None or seen.generation != migration.attempt:
        _end(ctx, record, f"the vm is gone from {migration.target} after the switchover")
    elif seen.state is ObservedState.RUNNING:
        _done(ctx, record, migration)
    elif seen.state is not ObservedState.INCOMING:
        _end(ctx, record, f"{migration.target} reports the vm {seen.state}: {seen.reason}")
    # incoming: the reconciler sends FinishIncoming (the record on the target is the word)


def _cancelling(
    ctx: StepContext, record: VmRecord, migration: MigrationRecord, seen: ObservedVm | None
) -> None:
    report = _report(seen, record.generation, migration.attempt)
    if seen is None or seen.generation != record.generation:
        _end(ctx, record, migration.reason)
    elif seen.state is ObservedState.HANDED_OVER or (
        report is not None and report.status is MigrationStatus.SENT
    ):
        _switch(ctx, record, migration)  # handed over before the cancel reached the source
    elif report is not None and report.status is MigrationStatus.FAILED:
        _end(ctx, record, migration.reason)
    else:
        _cancel_out(ctx, record, migration)


# --------------------------------------------------------------------------- moves


def cancel(ctx: StepContext, record: VmRecord, reason: str) -> None:
    """End the attempt without a switchover: at once if the source was never asked to send,
    else once the source confirms (``cancelling``)."""
    migration = record.migration
    assert migration is not None
    if migration.phase is Phase.PREPARING:
        _end(ctx, record, reason)
        return
    if migration.phase is not Phase.COPYING:
        return
    cancelling = replace(migration, phase=Phase.CANCELLING, progress_at=ctx.now.wall, reason=reason)
    ctx.change_vm(record, migration=cancelling, reason=f"cancelling migration: {reason}")
    _cancel_out(ctx, record, cancelling)


def _switch(ctx: StepContext, record: VmRecord, migration: MigrationRecord) -> None:
    """The source handed over: the VM is the destination's from now on (stored in this step,
    before ``FinishIncoming`` goes out), at generation = the attempt."""
    target = migration.target
    if not ctx.state.hosts[target].up:
        _lost_with_target(ctx, record, migration)
        return
    old_generation = record.generation
    disks = [replace(d, host=target) if d.host is not None else d for d in record.disks]
    endpoints = networks.placed_endpoints(ctx, record, target)
    switching = replace(migration, phase=Phase.SWITCHING, progress_at=ctx.now.wall)
    ctx.forget_sent(migration.source, record.name)
    ctx.change_vm(
        record,
        host=target,
        generation=migration.attempt,
        disks=disks,
        endpoints=endpoints,
        migration=switching,
        reason=f"switching over from {migration.source} to {target}",
    )
    # Stored with this step before any action goes out: the destination's word to run, and
    # the source's paused copy, stale now, destroyed.
    ctx.send(target, [FinishIncoming(name=record.name, generation=migration.attempt)])
    ctx.send(migration.source, [DeleteVm(name=record.name, generation=old_generation)])


def _lost_with_target(ctx: StepContext, record: VmRecord, migration: MigrationRecord) -> None:
    """The source handed over to a destination that is down: the VM's state is only there."""
    why = f"handed over to {migration.target}, which is down"
    ctx.change_vm(record, migration=None, reason=why)
    ctx.emit_vm(record, MigrationOutcome.FAILED, migration)
    ctx.change_vm(record, state=VmState.LOST, reason=why, recovering=True)
    lifecycle.release(ctx, record, VmState.PENDING, f"{why}; re-placing")


def _done(ctx: StepContext, record: VmRecord, migration: MigrationRecord) -> None:
    why = f"migrated from {migration.source} to {migration.target} ({migration.cause})"
    ctx.change_vm(record, migration=None, migrated_at=ctx.now.wall, drained_from=None, reason=why)
    ctx.emit_vm(record, MigrationOutcome.SUCCEEDED, migration)


def _end(ctx: StepContext, record: VmRecord, reason: str) -> None:
    """The attempt is over without a switchover (or the VM was lost after it): the reservation
    goes, the destination's copy is destroyed. A VM of a host still draining keeps
    ``drained_from``: the drain moves it by stop and start instead."""
    migration = record.migration
    assert migration is not None
    if migration.phase is not Phase.SWITCHING:
        _destroy_incoming(ctx, record.name, migration)
    where = record.host or "nowhere"
    why = f"migration to {migration.target} failed: {reason}; the vm stays on {where}"
    if migration.phase is Phase.SWITCHING:
        why = f"migration to {migration.target} ended badly: {reason}"
    source = ctx.state.hosts.get(migration.source)
    draining = source is not None and source.draining and record.host == migration.source
    drained_from = record.drained_from if draining else None
    ctx.change_vm(record, migration=None, reason=why, drained_from=drained_from)
    ctx.emit_vm(record, MigrationOutcome.FAILED, migration)


def abandon(ctx: StepContext, record: VmRecord, reason: str) -> None:
    """The VM is stopped, deleted or lost while migrating: end the attempt at once (the
    destination's copy is destroyed; the source's is stopped or deleted by its caller)."""
    migration = record.migration
    if migration is None:
        return
    if migration.phase is not Phase.SWITCHING:
        _cancel_out(ctx, record, migration)
    _end(ctx, record, reason)


# --------------------------------------------------------------------------- hosts and time


def target_down(ctx: StepContext, host: HostId) -> None:
    """``host`` was declared dead: attempts toward it end (the VM runs on its source)."""
    for name in sorted(ctx.state.incoming.get(host, ())):
        cancel(ctx, ctx.state.vms[name], f"destination {host} is down")


def check_timeouts(ctx: StepContext) -> None:
    """At a tick: cancel attempts that stalled; end cancels the source no longer reports."""
    config, now = ctx.config, ctx.now.wall
    for name in list(ctx.state.migrating):
        record = ctx.state.vms[name]
        migration = record.migration
        assert migration is not None
        age_s = (now - migration.progress_at).total_seconds()
        match migration.phase:
            case Phase.PREPARING if age_s > config.migration_prepare_timeout_s:
                limit = config.migration_prepare_timeout_s
                cancel(ctx, record, f"destination not ready after {limit:g}s")
            case Phase.COPYING if age_s > config.migration_stall_timeout_s:
                limit = config.migration_stall_timeout_s
                cancel(ctx, record, f"no progress for {limit:g}s")
            case Phase.CANCELLING if age_s > config.migration_cancel_grace_s:
                if not _source_still_sending(ctx, record, migration):
                    _end(ctx, record, migration.reason)
            case _:
                pass


def _source_still_sending(ctx: StepContext, record: VmRecord, migration: MigrationRecord) -> bool:
    runtime = ctx.state.runtimes.get(migration.source)
    seen = runtime.observed.get(record.name) if runtime is not None else None
    report = _report(seen, record.generation, migration.attempt)
    if seen is not None and seen.state is ObservedState.HANDED_OVER:
        return True
    return report is not None and report.status is not MigrationStatus.FAILED
