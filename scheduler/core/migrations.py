"""Live migration in the core: begin an attempt, follow the hosts' reports, switch over, end.
Pure; the protocol is common/migration_messages.py.

A VM ``v`` running at generation ``g`` on S moves to T as attempt ``t`` (its next generation,
above every generation or attempt it ever had: ``VmRecord.max_generation`` burns ``t`` even if
the attempt fails). The record's ``migration`` says where the attempt stands:

``preparing``  T is sent ``PrepareIncoming``; ``v`` holds its resources on T too.
    T reports ``v`` ``incoming`` at ``t``, status ``ready`` (address, ports) ─► ``copying``.
``copying``    S is sent ``MigrateOut``; S reports ``v`` running, status ``sending`` (progress).
    S reports ``handed_over`` (status ``sent``) ─► the switchover, in one step: ``v`` is stored
    on T at generation ``t`` (the only change of generation), ``switching``.
``switching``  T is sent ``FinishIncoming`` (in the switchover's step, whose actions go out
    once it is stored; repeated by the reconciler: the record on T at ``t`` *is* the stored
    switchover), S's stale copy is destroyed (``DeleteVm(g)``, then the orphan rule).
    T reports ``v`` running at ``t`` ─► done: "migrated from S to T".
``cancelling`` S is sent ``CancelMigration``; once S reports the attempt failed (or no longer
    reports it for ``migration_cancel_grace_s``) T is sent ``DeleteVm(t)`` ─► ended, ``v`` runs
    on S at ``g``. A source that handed over before the cancel reached it wins: switchover.

A failure reported by either side, no readiness within ``migration_prepare_timeout_s``, no
progress for ``migration_stall_timeout_s``, T declared dead, or a cancel request: cancelling
(before anything was sent to S, the attempt just ends). S declared dead: the VM is lost as
after any host death (placed again above ``t``) and T's copy is destroyed. Every command is
repeated while the reports show it not done (``ctx.send`` keeps repeats to one per
``command_retry_s``); a restart carries on from the stored record.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from common.fields import ErrorCode
from common.ids import HostId, VmName
from common.messages import (
    MigrationOutcome,
    VmReply,
    VmState,
)
from common.migration_messages import (
    MigrateVm,
    MigrationCause,
    MigrationPhase,
)
from scheduler.core import migration_flow
from scheduler.core.context import StepContext
from scheduler.core.views import vm_error
from scheduler.placement.filters import Reason
from scheduler.placement.pipeline import Placed, place
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, MigrationRecord, PlacementRequest, VmRecord

Phase = MigrationPhase
LIVE_DRIVERS = frozenset({"fake", "qemu"})
"""Driver families that can migrate a VM live. Hosts report ``family/accelerator`` (e.g.
``qemu/tcg``, ``qemu/kvm``); source and destination must report the very same string, since
a guest's state moves only between like accelerators."""
UNDERLAY_DRIVERS = frozenset({"qemu"})
"""Driver families whose destination must have an underlay address (the source sends there)."""


def driver_family(driver: str) -> str:
    """``qemu/tcg`` -> ``qemu``; ``fake`` -> ``fake``."""
    return driver.partition("/")[0]


_CAPACITY = frozenset({Reason.INSUFFICIENT_CPU, Reason.INSUFFICIENT_MEMORY})
_TARGET_TRIES = 16
"""Hosts of another driver kind skipped when the scheduler picks the destination."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a migration cannot begin (nothing was changed)."""

    code: ErrorCode
    detail: str

    @property
    def later(self) -> bool:
        """Only the hosts' migration slots are missing: it may begin once one frees."""
        return self.code is ErrorCode.BUSY

    def reply(self) -> VmReply:
        return vm_error(self.code, self.detail)


# --------------------------------------------------------------------------- for planners


def in_flight(state: ClusterState) -> Counter[HostId]:
    """Per host, the migrations under way that touch it (as source or destination)."""
    counts: Counter[HostId] = Counter()
    for name in state.migrating:
        migration = state.vms[name].migration
        if migration is not None:
            counts[migration.source] += 1
            counts[migration.target] += 1
    return counts


def last_migrated(state: ClusterState) -> dict[VmName, float]:
    """When each VM that ever migrated last finished one (UTC seconds since the epoch)."""
    return {
        name: record.migrated_at.timestamp()
        for name, record in state.vms.items()
        if record.migrated_at is not None
    }


# --------------------------------------------------------------------------- requests


def request(ctx: StepContext, body: MigrateVm) -> VmName | VmReply:
    """``stratus vm migrate``: begin a migration of the VM (to ``body.to``, or where placement
    puts it)."""
    record = ctx.state.vms.get(VmName(body.name))
    if record is None or record.state is VmState.DELETED:
        return vm_error(ErrorCode.NOT_FOUND, f"vm {body.name!r} does not exist")
    target = HostId(body.to) if body.to is not None else None
    refusal = begin(ctx, record, target, MigrationCause.REQUEST)
    return record.name if refusal is None else refusal.reply()


def cancel_request(ctx: StepContext, name: VmName) -> VmName | VmReply:
    """Cancel the VM's migration; repeating it changes nothing. Too late once switching."""
    record = ctx.state.vms.get(name)
    if record is None or record.state is VmState.DELETED:
        return vm_error(ErrorCode.NOT_FOUND, f"vm {name!r} does not exist")
    migration = record.migration
    if migration is None:
        return vm_error(ErrorCode.INVALID_STATE, f"vm {name!r} is not migrating")
    if migration.phase is Phase.SWITCHING:
        detail = f"vm {name!r} is already switching over to {migration.target}: too late"
        return vm_error(ErrorCode.INVALID_STATE, detail)
    if migration.phase is not Phase.CANCELLING:
        migration_flow.cancel(ctx, record, "cancel requested")
    return name


# --------------------------------------------------------------------------- begin


def begin(
    ctx: StepContext, record: VmRecord, target: HostId | None, cause: MigrationCause
) -> Refusal | None:
    """Begin migrating ``record`` to ``target`` (None: placement chooses), or say why not."""
    problem = _vm_problem(ctx, record)
    if problem is not None:
        return problem
    assert record.host is not None
    source = record.host
    busy = in_flight(ctx.state)
    limit = ctx.config.migration_max_per_host
    if busy[source] >= limit:
        return Refusal(ErrorCode.BUSY, f"host {source} has {limit} migrations under way")
    chosen = _target(ctx, record, source, target, busy)
    if isinstance(chosen, Refusal):
        return chosen
    now = ctx.now.wall
    attempt = record.next_generation()
    migration = MigrationRecord(
        source=source,
        target=chosen,
        attempt=attempt,
        cause=cause,
        phase=Phase.PREPARING,
        started_at=now,
        progress_at=now,
    )
    why = f"migrating to {chosen} ({cause})"
    ctx.change_vm(record, migration=migration, max_generation=attempt, reason=why)
    ctx.emit_vm(record, MigrationOutcome.STARTED)
    migration_flow.prepare(ctx, record, migration)
    return None


def _vm_problem(ctx: StepContext, record: VmRecord) -> Refusal | None:
    name = record.name
    if record.migration is not None:
        where = f"{record.migration.target} ({record.migration.phase})"
        return Refusal(ErrorCode.NOT_MIGRATABLE, f"vm {name!r} is already migrating to {where}")
    if record.state is not VmState.RUNNING or record.host is None:
        detail = f"vm {name!r} is {record.state}: only a running vm migrates live"
        return Refusal(ErrorCode.NOT_MIGRATABLE, detail)
    host = ctx.state.hosts.get(record.host)
    if host is None or not host.up:
        return Refusal(ErrorCode.NOT_MIGRATABLE, f"vm {name!r} is on a host that is down")
    if driver_family(host.driver) not in LIVE_DRIVERS:
        detail = f"vm {name!r} runs on driver {host.driver!r}, which cannot migrate live"
        return Refusal(ErrorCode.NOT_MIGRATABLE, detail)
    return None


def _request_of(ctx: StepContext, record: VmRecord, avoid: set[HostId]) -> PlacementRequest:
    """The VM as a placement request: in its region (its host's, if it asked for none)."""
    assert record.host is not None
    region = record.region or ctx.state.hosts[record.host].region
    return PlacementRequest(
        record.name, record.resources, region, record.availability_set, frozenset(avoid)
    )


def _set_members(ctx: StepContext, record: VmRecord) -> dict[str, int] | None:
    """The availability set's members per fault domain, without this VM."""
    if record.availability_set is None or record.host is None:
        return None
    counts = ctx.views.set_fault_domains(record.availability_set)
    own = ctx.state.hosts[record.host].fault_domain
    counts[own] = counts.get(own, 0) - 1
    return counts


def _target(
    ctx: StepContext,
    record: VmRecord,
    source: HostId,
    target: HostId | None,
    busy: Counter[HostId],
) -> HostId | Refusal:
    if target is not None:
        return _check_target(ctx, record, source, target, busy)
    limit = ctx.config.migration_max_per_host
    avoid = {source} | {host for host, count in busy.items() if count >= limit}
    members = _set_members(ctx, record)
    index = ctx.views.index()
    for _ in range(_TARGET_TRIES):
        result = index.place(_request_of(ctx, record, avoid), ctx.policy, members)
        if not isinstance(result, Placed):
            detail = f"no host can take vm {record.name!r}: {result.summary()}"
            return Refusal(ErrorCode.INSUFFICIENT_CAPACITY, detail)
        problem = _kind_problem(ctx.state.hosts[source], ctx.state.hosts[result.host_id])
        if problem is None:
            return result.host_id
        avoid.add(result.host_id)
    detail = f"no host of driver {ctx.state.hosts[source].driver!r} can take vm {record.name!r}"
    return Refusal(ErrorCode.INSUFFICIENT_CAPACITY, detail)


def _kind_problem(source: HostRecord, target: HostRecord) -> str | None:
    if target.driver != source.driver:
        return f"host {target.host_id} runs driver {target.driver!r}, not {source.driver!r}"
    if driver_family(target.driver) in UNDERLAY_DRIVERS and not target.underlay_ip:
        return f"host {target.host_id} has no underlay address to receive the vm at"
    return None


def _check_target(
    ctx: StepContext,
    record: VmRecord,
    source: HostId,
    target: HostId,
    busy: Counter[HostId],
) -> HostId | Refusal:
    """The operator's choice of destination, checked like a placement."""
    host = ctx.state.hosts.get(target)
    if host is None:
        return Refusal(ErrorCode.INVALID_TARGET, f"host {target!r} is not known")
    if target == source:
        return Refusal(ErrorCode.INVALID_TARGET, f"vm {record.name!r} already runs on {target}")
    problem = _kind_problem(ctx.state.hosts[source], host)
    if problem is not None:
        return Refusal(ErrorCode.INVALID_TARGET, problem)
    if busy[target] >= ctx.config.migration_max_per_host:
        return Refusal(ErrorCode.BUSY, f"host {target} has migrations under way to its limit")
    view = ctx.views.index().view(target)
    result = place(
        _request_of(ctx, record, {source}), [view], ctx.policy, _set_members(ctx, record)
    )
    if isinstance(result, Placed):
        return target
    code = ErrorCode.INVALID_TARGET
    if set(result.rejections) <= _CAPACITY:
        code = ErrorCode.INSUFFICIENT_CAPACITY
    reasons = ", ".join(sorted(reason.value for reason in result.rejections))
    return Refusal(code, f"host {target} cannot take vm {record.name!r}: {reasons}")
