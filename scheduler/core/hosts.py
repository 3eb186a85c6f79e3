"""Cordon, uncordon and drain inside the core: the operations and hooks ``core.py`` calls. Pure.

Like scheduler/storageops.py, these act through the core's own helpers (``_set``,
``_command``, ``_emit_host``) so every change keeps the indexes, the store and the event stream
right. A cordoned host takes no new VMs; a draining host is also emptied, a few VMs at a time
(``drain_parallelism``): each is stopped there and placed again elsewhere (scheduler/drain.py
plans the moves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.ids import HostId
from common.messages import (
    ErrorBody,
    ErrorCode,
    HostInfo,
    HostRef,
    HostReply,
    HostState,
    VmState,
)
from scheduler.core import drain, views
from scheduler.core.contract import Mutation, Now, Op, Reply

if TYPE_CHECKING:
    from scheduler.core.step import SchedulerCore


def host_state(up: bool) -> HostState:
    return HostState.UP if up else HostState.DOWN


def host_op(core: SchedulerCore, item: Mutation, now: Now) -> HostId | HostReply:
    """Cordon, uncordon or drain a host (idempotent: repeating one changes nothing)."""
    assert isinstance(item.body, HostRef)
    host = HostId(item.body.host_id)
    record = core.state.hosts.get(host)
    if record is None:
        return HostReply(error=ErrorBody(ErrorCode.NOT_FOUND, f"host {host!r} is not known"))
    if item.op is Op.DRAIN and not record.draining:
        problem = _drain_capacity_problem(core, host)
        if problem is not None:
            return HostReply(error=ErrorBody(ErrorCode.INSUFFICIENT_CAPACITY, problem))
    cordoned = item.op is not Op.UNCORDON
    draining = item.op is Op.DRAIN or (item.op is Op.CORDON and record.draining)
    if (record.cordoned, record.draining) == (cordoned, draining):
        return host
    record.cordoned, record.draining = cordoned, draining
    core.state.host_changed(host)
    core._capacity_changed = True
    reason = {Op.CORDON: "cordoned", Op.UNCORDON: "uncordoned", Op.DRAIN: "drain started"}
    event = core._emit_host(host, host_state(record.up), reason[item.op], now)
    core._drain_reported[host] = event.drain_remaining
    core._drains_due = core._drains_due or draining
    return host


def _drain_capacity_problem(core: SchedulerCore, host: HostId) -> str | None:
    sets = {r.availability_set for r in drain.movable(core.state, host)} - {None}
    members = {s: core.views.set_fault_domains(s) for s in sets if s is not None}
    return drain.check_capacity(core.state, host, core.views.all(), core.policy, members)


def answer_host(core: SchedulerCore, item: Mutation, result: HostId | HostReply, now: Now) -> None:
    if isinstance(result, HostReply):
        reply = result
    else:
        reply = HostReply(host=host_info(core, result, now))
    if item.via_job and reply.error is not None:
        err = reply.error
        core._reject_job(item.job_subject, item.body.request_id, err.code, err.detail, now)
    core._actions.append(Reply(item.token, reply))


def host_info(core: SchedulerCore, host: HostId, now: Now) -> HostInfo:
    record = core.state.hosts[host]
    return views.host_info(
        record,
        core.state.runtimes.get(host),
        core.state.allocated.get(host),
        len(core.state.by_host.get(host, ())),
        now.mono_s,
        drain_remaining=drain_remaining(core, host),
    )


def drain_remaining(core: SchedulerCore, host: HostId) -> int:
    record = core.state.hosts.get(host)
    if record is None or not record.draining:
        return 0
    return drain.remaining(core.state, host, drain.moving(core.state))


def progress_drains(core: SchedulerCore, now: Now) -> None:
    """Start moving the next VMs of each draining host; finish drains with nothing left."""
    core._drains_due = False
    draining = [host for host, record in core.state.hosts.items() if record.draining]
    if not draining:
        return
    on_the_move = drain.moving(core.state)
    for host in draining:
        step = drain.plan_drain(core.state, host, core.config.drain_parallelism, on_the_move)
        for name in step.move:
            vm = core.state.vms[name]
            why = f"moving off draining host {host}"
            core._set(vm, now, state=VmState.STOPPING, reason=why, drained_from=host)
            core._command(host, name, vm.generation, now, stop=True)
        record = core.state.hosts[host]
        if step.done:
            record.draining = False
            core.state.host_changed(host)
            core._drain_reported.pop(host, None)
            core._emit_host(host, host_state(record.up), "drain complete", now)
        elif core._drain_reported.get(host) != step.remaining:
            core._drain_reported[host] = step.remaining
            left = f"draining: {step.remaining} vms left"
            core._emit_host(host, host_state(record.up), left, now)
