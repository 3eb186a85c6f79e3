"""A VM's moves on and off its host, shared by the feature handlers. Pure.

Stop, delete, a finished stop, and *release* (take the VM off its host with a new generation,
so that any copy left there is stale; its endpoints give their host ports back, its addresses
stay). Everything goes through the step context.
"""

from __future__ import annotations

from datetime import datetime

from common.ids import HostId, VmName
from common.messages import AgentCommand, DeleteVm, StopVm, VmState
from scheduler.core import disks, networks
from scheduler.core.context import StepContext
from scheduler.state.model import VmRecord


def command(
    ctx: StepContext, host: HostId | None, name: VmName, generation: int, *, stop: bool
) -> None:
    """Tell ``host`` to stop (or delete) its copy of ``name`` at ``generation``."""
    assert host is not None, f"vm {name} holds capacity on no host"
    cmd: AgentCommand = (
        StopVm(name=name, generation=generation)
        if stop
        else DeleteVm(name=name, generation=generation)
    )
    ctx.send(host, [cmd])


def stop(ctx: StepContext, record: VmRecord) -> None:
    if record.drained_from is not None:  # a stop asked for during a drain's move wins
        ctx.change_vm(record, drained_from=None, reason="stop requested")
    if record.holds_capacity and record.state is not VmState.STOPPING:
        ctx.change_vm(record, state=VmState.STOPPING, reason="stop requested")
        command(ctx, record.host, record.name, record.generation, stop=True)
    elif record.state in (VmState.PENDING, VmState.FAILED):
        ctx.change_vm(record, state=VmState.STOPPED, reason="stopped before placement")


def delete(ctx: StepContext, record: VmRecord) -> None:
    if record.holds_capacity:
        if record.state is not VmState.DELETING:
            ctx.change_vm(record, state=VmState.DELETING, reason="delete requested")
            command(ctx, record.host, record.name, record.generation, stop=False)
    elif record.state is not VmState.DELETED:
        ctx.change_vm(record, state=VmState.DELETED, reason="deleted")
        ctx.state.forget_set_member(record)
        disks.drop_disks(ctx, record)
        if record.nics:  # its addresses are free: a VM waiting for one may be placed
            ctx.capacity_changed()


def deleted(ctx: StepContext, record: VmRecord, reason: str) -> None:
    """Its host no longer runs it (or is dead): the VM is gone."""
    release(ctx, record, VmState.DELETED, reason)
    ctx.state.forget_set_member(record)


def stopped(ctx: StepContext, record: VmRecord, reason: str) -> None:
    """A stop finished: the VM is deallocated, or placed again if a drain is moving it."""
    if record.drained_from is None:
        release(ctx, record, VmState.STOPPED, reason)
    else:
        why = f"moved off draining host {record.drained_from}; re-placing"
        release(ctx, record, VmState.PENDING, why)


def release(ctx: StepContext, record: VmRecord, state: VmState, reason: str) -> None:
    """Take the VM off its host: a new generation (above any migration attempt's too), so any
    copy left there is stale."""
    if record.host is not None:
        ctx.forget_sent(record.host, record.name)
    pending_since: datetime | None = ctx.now.wall if state is VmState.PENDING else None
    ctx.change_vm(
        record,
        state=state,
        host=None,
        generation=record.next_generation(),
        reason=reason,
        pending_since=pending_since,
        endpoints=networks.unplaced_endpoints(record),
    )
    if state is VmState.PENDING:
        ctx.want_placement(record.name)
    ctx.capacity_changed()
