"""Hosts in the core: heartbeats, liveness, cordon, uncordon and drain. Pure.

- A heartbeat renews the host's lease (the ack), registers the host, and reconciles its
  inventory against the records (scheduler/core/reconciler.py) unless nothing changed on
  either side since a reconcile that found it right. An unchanged heartbeat (``_unchanged``:
  compared field by field, nothing built) only renews the lease: at 10,000 hosts they are
  nearly all of them.
- A host silent for ``dead_after_s`` is declared dead: its VMs are lost and placed again.
- A cordoned host takes no new VMs; a draining host is also emptied, a few VMs at a time
  (``drain_parallelism``): each is stopped there and placed again elsewhere (drain.py plans).
"""

from __future__ import annotations

from msgspec.structs import replace

from common import codec
from common.fields import ErrorCode
from common.ids import HostId, VmName
from common.messages import (
    Heartbeat,
    HeartbeatAck,
    HostInfo,
    HostRef,
    HostReply,
    HostState,
    StartVm,
    VmSpec,
    VmState,
)
from common.migration_messages import MigrationCause
from common.resources import ZERO
from scheduler.core import (
    copyloss,
    copyreports,
    disks,
    drain,
    hostnets,
    hostreplicas,
    lifecycle,
    migration_flow,
    migrations,
    networks,
    predicted,
    replicas,
    views,
)
from scheduler.core.context import KEEP, StepContext
from scheduler.core.contract import Ack, Op
from scheduler.core.liveness import claim_after_s, expired_hosts
from scheduler.core.reconciler import Outcome, SpecOf, Transition, reconcile_host
from scheduler.state.model import HostRecord, HostRuntime, VmRecord

# --------------------------------------------------------------------------- heartbeats


def heartbeat(
    ctx: StepContext, hb: Heartbeat, token: int, scheduler_id: str, epoch: int = 0
) -> None:
    """``epoch``: the leadership the ack is granted in (stamped here, not copied by the shell)."""
    host = HostId(hb.host_id)
    now_s = ctx.now.mono_s
    runtime = ctx.state.runtimes.get(host)
    if runtime is None:
        runtime = ctx.state.runtimes[host] = HostRuntime(last_seen_s=now_s)
    elif _unchanged(ctx, host, hb, runtime):
        steady(ctx, host, hb, token, runtime)
        return
    refused = _claim_refusal(ctx, host, hb, runtime)
    if refused:
        ctx.actions.append(Ack(token, _ack(ctx, hb, runtime, scheduler_id, epoch, refused)))
        return
    runtime.last_seen_s = runtime.heard_s = now_s
    reconcile = _learn(ctx, host, hb, runtime)
    ctx.actions.append(Ack(token, _ack(ctx, hb, runtime, scheduler_id, epoch)))
    if (runtime.boot_id, runtime.last_seq) == (hb.boot_id, hb.seq) and host in ctx.state.hosts:
        # Taken in: the host's networks first, so that a StartVm the reconcile sends finds them;
        # then its replicas (what is ready may let a VM start).
        hostnets.heartbeat(ctx, host, hb.network_digest, runtime)
        hostreplicas.heartbeat(ctx, host, hb)
    if reconcile:
        _reconcile(ctx, host, runtime)


def _unchanged(ctx: StepContext, host: HostId, hb: Heartbeat, runtime: HostRuntime) -> bool:
    """The heartbeat says nothing the core does not hold: the next report of the boot that holds
    the host, its inventory left out with the digest held, nothing changed on either side since
    a reconcile found it right, the same identity and capacity, and its replicas as wanted and
    ready. The full path would then only renew the lease (and take in its networks' digest,
    which both paths do)."""
    state = ctx.state
    return (
        hb.vms_omitted
        and hb.boot_id == runtime.boot_id
        and hb.seq > runtime.last_seq
        and hb.inventory_digest == runtime.inventory_digest != ""
        and hb.fenced == runtime.fenced
        and runtime.settled
        and runtime.ack is not None
        and host not in state.touched_hosts
        and _same_host(state.hosts.get(host), hb)
        and hostreplicas.unchanged(ctx, host, hb, runtime)
    )


def steady(ctx: StepContext, host: HostId, hb: Heartbeat, token: int, runtime: HostRuntime) -> None:
    """An unchanged heartbeat (``_unchanged``): the host is alive and its lease renewed, by the
    ack sent for its last report with this report's number."""
    ack = runtime.ack
    assert ack is not None
    runtime.last_seen_s = runtime.heard_s = ctx.now.mono_s
    runtime.last_seq = seq = hb.seq
    ack = runtime.ack = replace(ack, seq=seq)
    ctx.actions.append(Ack(token, ack))
    hostnets.heartbeat(ctx, host, hb.network_digest, runtime)


def _claim_refusal(ctx: StepContext, host: HostId, hb: Heartbeat, runtime: HostRuntime) -> str:
    """Why this heartbeat is refused ("" if it is not): another boot holds the host id and was
    heard within ``claim_after_s`` (both agents alive). A holder silent for longer is taken to
    be the same host's agent restarted, and the new boot takes the id over."""
    holder = runtime.boot_id
    silent_s = ctx.now.mono_s - runtime.heard_s
    if holder in ("", hb.boot_id) or silent_s > claim_after_s(ctx.config):
        return ""
    why = f"host id {host} is held by another agent (boot {holder[:8]}…, seen {silent_s:.1f} s ago)"
    if runtime.refused_boot != hb.boot_id:  # reported once per claimant
        runtime.refused_boot = hb.boot_id
        record = ctx.state.hosts.get(host)
        state = _state_of(record.up) if record is not None else HostState.UP
        _emit_host(ctx, host, state, f"second agent refused (boot {hb.boot_id[:8]}…): {why}")
    return why


def _learn(ctx: StepContext, host: HostId, hb: Heartbeat, runtime: HostRuntime) -> bool:
    """Take in what a report says; True when the host must be reconciled."""
    if runtime.boot_id == hb.boot_id and hb.seq <= runtime.last_seq:
        return False  # an older report overtaken by a newer one: nothing new to learn
    runtime.boot_id, runtime.last_seq, runtime.fenced = hb.boot_id, hb.seq, hb.fenced
    if not hb.vms_omitted:
        _register(ctx, host, hb)
        runtime.observed = {VmName(vm.name): vm for vm in hb.vms}
        runtime.inventory_digest = hb.inventory_digest
        return True
    if hb.inventory_digest == "" or hb.inventory_digest != runtime.inventory_digest:
        expected = predicted.inventory(ctx.state, host)
        if expected is None or codec.inventory_digest(expected) != hb.inventory_digest:
            # An inventory not held (a restart, a host declared dead): alive, but nothing
            # else is learnt until the agent, told so by the ack, reports in full (at once).
            return False
        # After a restart: the host holds exactly what the records say it runs.
        runtime.observed = {VmName(vm.name): vm for vm in expected}
        runtime.inventory_digest = hb.inventory_digest
        runtime.settled = predicted.reconciled(ctx.state, runtime)
        if runtime.settled:
            ctx.state.touched_hosts.discard(host)
    _register(ctx, host, hb)
    # Unchanged on both sides since a reconcile that found it right: nothing to do.
    return not runtime.settled or host in ctx.state.touched_hosts


def _reconcile(ctx: StepContext, host: HostId, runtime: HostRuntime) -> None:
    state = ctx.state
    state.touched_hosts.discard(host)
    assigned = {name: state.vms[name] for name in state.by_host.get(host, ())}
    incoming = {name: _attempt(state.vms[name]) for name in state.incoming.get(host, ())}
    spec = _unless_just_sent(ctx, host, replicas.start_spec(ctx))
    result = reconcile_host(host, assigned, runtime.observed, incoming, spec)
    orphaned = sum((vm.resources for vm in result.orphans), ZERO)
    if orphaned != runtime.orphaned:
        runtime.orphaned = orphaned
        state.stale_views.add(host)
        ctx.capacity_changed()
    runtime.settled = not result.transitions and not result.commands and not result.waiting
    for transition in result.transitions:
        _apply(ctx, transition, host)
    ctx.send(host, result.commands)
    if state.disks.held or state.disks.by_copies:
        copyreports.observe(ctx, host, runtime.observed)
    if state.migrating and migration_flow.observe(ctx, host, runtime.observed):
        runtime.settled = False  # a migration follows every report of its hosts


def _unless_just_sent(ctx: StepContext, host: HostId, spec: SpecOf) -> SpecOf:
    """``spec``, but the spec of a ``StartVm`` sent to ``host`` for the VM at its generation
    less than ``command_retry_s`` ago is that one, not built again: the agent takes one start
    per generation, and ``ctx.send`` does not repeat it before the retry is due (building the
    spec of every VM not yet running at each of its host's reports was the reconcile's cost)."""
    sent = ctx.carry.sent.get(host)
    if not sent:
        return spec
    now_s, retry_s = ctx.now.mono_s, ctx.config.command_retry_s

    def start_spec(record: VmRecord) -> VmSpec | None:
        last = sent.get(record.name)
        if last is not None and now_s - last[1] < retry_s:
            command = last[0]
            if isinstance(command, StartVm) and command.generation == record.generation:
                return command.vm
        return spec(record)

    return start_spec


def _attempt(record: VmRecord) -> int:
    assert record.migration is not None
    return record.migration.attempt


def _ack(
    ctx: StepContext,
    hb: Heartbeat,
    runtime: HostRuntime,
    scheduler_id: str,
    epoch: int,
    refused: str = "",
) -> HeartbeatAck:
    config = ctx.config
    ack = HeartbeatAck(
        host_id=hb.host_id,
        seq=hb.seq,
        scheduler_id=scheduler_id,
        heartbeat_interval_s=config.heartbeat_interval_s,
        fence_after_s=config.fence_after_s,
        cpu_overcommit=hb.cpu_overcommit or config.cpu_overcommit,
        inventory_digest="" if refused else runtime.inventory_digest,
        claim_after_s=claim_after_s(config),
        refused=refused,
        epoch=epoch,
    )
    if not refused:
        runtime.ack = ack
    return ack


def _same_host(record: HostRecord | None, hb: Heartbeat) -> bool:
    """The host's record is up and says what the heartbeat reports of the host (its identity,
    capacity and addresses): ``_register`` would change nothing. Compared field by field, not
    by building the record the heartbeat makes (that cost more than the rest of a heartbeat)."""
    return (
        record is not None
        and record.up
        and record.boot_id == hb.boot_id
        and record.capacity == hb.capacity
        and record.region == hb.region
        and record.fault_domain == hb.fault_domain
        and record.labels == hb.labels
        and record.cpu_overcommit == hb.cpu_overcommit
        and record.driver == hb.driver
        and record.underlay_ip == hb.underlay_ip
        and record.replica_port == hb.replica_port
        and record.disk_capacity_mib == hb.disk_capacity_mib
    )


def _register(ctx: StepContext, host: HostId, hb: Heartbeat) -> None:
    record = ctx.state.hosts.get(host)
    if _same_host(record, hb):
        return
    fresh = HostRecord(
        host_id=host,
        region=hb.region,
        fault_domain=hb.fault_domain,
        capacity=hb.capacity,
        labels=dict(hb.labels),
        cpu_overcommit=hb.cpu_overcommit,
        driver=hb.driver,
        up=True,
        cordoned=record.cordoned if record else False,
        draining=record.draining if record else False,
        boot_id=hb.boot_id,
        drain_reported=record.drain_reported if record else None,
        underlay_ip=hb.underlay_ip,
        drain_cold=record.drain_cold if record else False,
        replica_port=hb.replica_port,
        disk_capacity_mib=hb.disk_capacity_mib,
    )
    ctx.state.hosts[host] = fresh
    ctx.host_changed(host)
    ctx.views.forget_empty()
    if record is None or not record.up or record.underlay_ip != fresh.underlay_ip:
        networks.host_moved(ctx, host)
    if record is not None and (record.underlay_ip, record.replica_port) != (
        fresh.underlay_ip,
        fresh.replica_port,
    ):
        hostreplicas.hosts_moved(ctx)
    if record is None or not record.up:
        reason = "registered" if record is None else "heartbeats resumed"
        _emit_host(ctx, host, HostState.UP, reason)


def _apply(ctx: StepContext, transition: Transition, host: HostId) -> None:
    record = ctx.state.vms[transition.name]
    match transition.outcome:
        case Outcome.STARTING:
            ctx.change_vm(record, state=VmState.STARTING, reason="")
        case Outcome.RUNNING:  # it started: the failed starts before no longer bar hosts
            made = disks.settled(record, host)  # its new disks exist on the host now
            ctx.change_vm(
                record,
                state=VmState.RUNNING,
                reason=_running_reason(record),
                recovering=False,
                start_attempts=0,
                failed_hosts=[],
                disks=KEEP if made is None else made,
            )
        case Outcome.VANISHED:
            ctx.change_vm(record, state=VmState.STARTING, reason=transition.reason)
        case Outcome.STOPPED:
            lifecycle.stopped(ctx, record, "stopped")
        case Outcome.DELETED:
            lifecycle.deleted(ctx, record, "deleted")
        case Outcome.START_FAILED:
            attempts = record.start_attempts + 1
            why = f"start failed on {host}: {transition.reason}"
            if transition.retryable and attempts < ctx.config.max_start_attempts:
                lifecycle.release(ctx, record, VmState.PENDING, f"{why}; trying another host")
                failed = [*record.failed_hosts, host]
                ctx.change_vm(record, start_attempts=attempts, failed_hosts=failed)
            else:
                lifecycle.release(ctx, record, VmState.FAILED, why)
                ctx.change_vm(record, start_attempts=attempts)


def _running_reason(record: VmRecord) -> str:
    """Why a VM is running: after a host's death, with its disks if they are replicated."""
    if record.recovering and replicas.is_replicated(record):
        return "restarted with its disks"
    return ""


# --------------------------------------------------------------------------- liveness


def check_liveness(ctx: StepContext) -> None:
    """Declare dead each up host silent for more than ``dead_after_s``. Hosts are only ever
    heard later, so none can be silent that long before the one heard least lately is: until
    then (``ClusterState.heard_since_s``) a tick walks no host (at 10,000 hosts, five ticks a
    second, the walks cost 1 % of a core)."""
    state = ctx.state
    now_s, dead_after_s = ctx.now.mono_s, ctx.config.dead_after_s
    if now_s - state.heard_since_s <= dead_after_s:
        return
    up = [host for host, record in state.hosts.items() if record.up]
    dead = expired_hosts(state.runtimes, up, now_s, dead_after_s)
    for host in dead:
        _declare_dead(ctx, host)
    # Their copies go together: of a disk's last current ones all are kept, and any may return.
    copyloss.hosts_lost(ctx, dead)
    runtimes = state.runtimes
    state.heard_since_s = min(
        (runtimes[host].last_seen_s for host in up if state.hosts[host].up and host in runtimes),
        default=now_s,
    )


def _declare_dead(ctx: StepContext, host: HostId) -> None:
    state = ctx.state
    runtime = state.runtimes[host]
    age = ctx.now.mono_s - runtime.last_seen_s
    state.hosts[host].up = False
    state.host_changed(host)
    ctx.views.forget_empty()
    _emit_host(ctx, host, HostState.DOWN, f"no heartbeat for {age:.1f}s")
    runtime.forget_reports()
    state.stale_views.add(host)
    why = f"host {host} declared dead"
    migration_flow.target_down(ctx, host)
    for name in sorted(state.by_host.get(host, ())):
        vm = state.vms[name]
        migration_flow.abandon(ctx, vm, why)
        if vm.state is VmState.STOPPING:
            lifecycle.stopped(ctx, vm, why)
        elif vm.state is VmState.DELETING:
            lifecycle.deleted(ctx, vm, why)
        else:
            ctx.change_vm(vm, state=VmState.LOST, reason=why, recovering=True)
            again = "; restarting with its disks" if replicas.is_replicated(vm) else "; re-placing"
            lifecycle.release(ctx, vm, VmState.PENDING, why + again)
    ctx.forget_sent(host)


# --------------------------------------------------------------------------- cordon and drain


def _state_of(up: bool) -> HostState:
    return HostState.UP if up else HostState.DOWN


def _emit_host(ctx: StepContext, host: HostId, state: HostState, reason: str) -> int:
    """Emit a host event; returns the drain's remaining count it reported."""
    remaining = drain_remaining(ctx, host)
    ctx.emit_host(host, state, reason, remaining)
    return remaining


def host_op(ctx: StepContext, op: Op, body: HostRef) -> HostId | HostReply:
    """Cordon, uncordon or drain a host (idempotent: repeating one changes nothing)."""
    host = HostId(body.host_id)
    record = ctx.state.hosts.get(host)
    if record is None:
        return views.host_error(ErrorCode.NOT_FOUND, f"host {host!r} is not known")
    if op is Op.DRAIN and not record.draining:
        problem = _drain_capacity_problem(ctx, host)
        if problem is not None:
            return views.host_error(ErrorCode.INSUFFICIENT_CAPACITY, problem)
    cordoned = op is not Op.UNCORDON
    draining = op is Op.DRAIN or (op is Op.CORDON and record.draining)
    cold = body.cold if op is Op.DRAIN else record.drain_cold and draining
    if (record.cordoned, record.draining, record.drain_cold) == (cordoned, draining, cold):
        return host
    if (record.cordoned, record.draining) == (cordoned, draining):  # only how to move changed
        record.drain_cold = cold
        ctx.host_changed(host)
        return host
    record.cordoned, record.draining, record.drain_cold = cordoned, draining, cold
    ctx.host_changed(host)
    reason = {Op.CORDON: "cordoned", Op.UNCORDON: "uncordoned", Op.DRAIN: "drain started"}
    record.drain_reported = _emit_host(ctx, host, _state_of(record.up), reason[op])
    ctx.carry.drains_due = ctx.carry.drains_due or draining
    return host


def _drain_capacity_problem(ctx: StepContext, host: HostId) -> str | None:
    sets = {r.availability_set for r in drain.movable(ctx.state, host)} - {None}
    members = {s: ctx.views.set_fault_domains(s) for s in sets if s is not None}
    return drain.check_capacity(ctx.state, host, ctx.views.all(), ctx.policy, members)


def _move(ctx: StepContext, vm: VmRecord, host: HostId) -> None:
    """Move a VM off draining ``host``: live, unless told not to or it cannot migrate."""
    if ctx.state.hosts[host].drain_cold:
        _move_cold(ctx, vm, host, "")
        return
    refusal = migrations.begin(ctx, vm, None, MigrationCause.DRAIN)
    if refusal is None:
        ctx.change_vm(vm, drained_from=host)
    elif not refusal.later:  # busy hosts: tried again at a later step
        _move_cold(ctx, vm, host, refusal.detail)


def _move_cold(ctx: StepContext, vm: VmRecord, host: HostId, why_not_live: str) -> None:
    why = f"moving off draining host {host}"
    if why_not_live:
        why += f" by stop and start: {why_not_live}"
    ctx.change_vm(vm, state=VmState.STOPPING, reason=why, drained_from=host)
    lifecycle.command(ctx, host, vm.name, vm.generation, stop=True)


def host_info(ctx: StepContext, host: HostId) -> HostInfo:
    state = ctx.state
    return views.host_info(
        state.hosts[host],
        state.runtimes.get(host),
        state.allocated.get(host),
        len(state.by_host.get(host, ())),
        ctx.now.mono_s,
        drain_remaining=drain_remaining(ctx, host),
        migrations=migrations.in_flight(state)[host] if state.migrating else 0,
        disk_used_mib=state.disks.used_mib.get(host, 0),
        replicas=state.disks.replicas_on(host),
    )


def drain_remaining(ctx: StepContext, host: HostId) -> int:
    record = ctx.state.hosts.get(host)
    if record is None or not record.draining:
        return 0
    return drain.remaining(ctx.state, host, drain.moving(ctx.state))


def progress_drains(ctx: StepContext) -> None:
    """Start moving the next VMs of each draining host; finish drains with nothing left."""
    ctx.carry.drains_due = False
    state = ctx.state
    draining = [host for host, record in state.hosts.items() if record.draining]
    if not draining:
        return
    on_the_move = drain.moving(state)
    for host in draining:
        for vm in drain.failed_live(state, host):
            _move_cold(ctx, vm, host, f"live migration failed ({vm.reason})")
        step = drain.plan_drain(state, host, ctx.config.drain_parallelism, on_the_move)
        for name in step.move:
            _move(ctx, state.vms[name], host)
        record = state.hosts[host]
        if step.done:
            record.draining = False
            record.drain_reported = None
            state.host_changed(host)
            _emit_host(ctx, host, _state_of(record.up), "drain complete")
        elif record.drain_reported != step.remaining:
            record.drain_reported = step.remaining
            state.host_changed(host)
            _emit_host(ctx, host, _state_of(record.up), f"draining: {step.remaining} vms left")
