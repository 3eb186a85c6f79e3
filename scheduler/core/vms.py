"""VM requests and placement, in the core. Pure.

Create, stop, start and delete a VM; place the pending VMs (new ones at once, all of them again
when capacity changed, at a tick); fail VMs pending for longer than ``placement_timeout_s``.
"""

from __future__ import annotations

from collections import defaultdict

from common.fields import ErrorCode
from common.ids import HostId, VmName
from common.messages import AgentCommand, CreateVm, StartVm, VmReply, VmState
from common.sizes import find_size
from scheduler.core import (
    copyloss,
    disks,
    hostnets,
    images,
    lifecycle,
    migration_flow,
    networks,
    replicas,
)
from scheduler.core.context import StepContext
from scheduler.core.contract import Op
from scheduler.core.views import vm_error
from scheduler.placement.index import HostIndex
from scheduler.placement.pipeline import Placed, Unplaceable, could_ever_fit
from scheduler.state.model import PlacementRequest, VmRecord

PLACED_PER_STEP = 2048
"""Most pending VMs one step tries to place (as many as a step takes requests). When 1,000
hosts were declared dead at once, one step re-placed their 20,000 VMs and ran 5 s: no
heartbeat was acked and no lease renewed meanwhile."""


def create(ctx: StepContext, body: CreateVm) -> VmName | VmReply:
    size = find_size(ctx.sizes, body.size)  # any case: small, Small, SMALL
    if size is None:
        known = ", ".join(sorted(ctx.sizes))
        return vm_error(ErrorCode.UNKNOWN_SIZE, f"unknown size {body.size!r}; known: {known}")
    name = VmName(body.name)
    existing = ctx.state.vms.get(name)
    if existing is not None and existing.state is not VmState.DELETED:
        return _repeated(ctx, existing, body, size.name)
    planned = networks.plan_nics(ctx.state, body.nics, body.region)
    if isinstance(planned, VmReply):
        return planned
    plans, region = planned
    image = images.image_for_create(ctx.state.images, body.image)
    if isinstance(image, VmReply):
        return image
    request = PlacementRequest(name, size.resources, region)
    if not could_ever_fit(request, ctx.views.empty()):
        where = f"region {region!r}" if region else "any region"
        return vm_error(
            ErrorCode.INSUFFICIENT_CAPACITY,
            f"size {size.name} ({size.resources}) is larger than every host in {where}",
        )
    storage = replicas.storage_for(ctx, body.storage, region)
    if isinstance(storage, VmReply):
        return storage
    generation = existing.next_generation() if existing is not None else 1
    new_disks, serial = disks.initial_disks(name, generation, image, body.data_disks_mib, storage)
    nics = networks.new_nics(ctx.state, plans) if plans else []
    record = VmRecord(
        name=name,
        size=size.name,
        cpu_milli=size.cpu_milli,
        mem_mib=size.mem_mib,
        image=body.image,
        region=region,
        availability_set=body.availability_set,
        state=VmState.PENDING,
        generation=generation,
        reason=networks.missing_address(nics) or "waiting for placement",
        created_at=ctx.now.wall,
        updated_at=ctx.now.wall,
        pending_since=ctx.now.wall,
        disks=new_disks,
        disk_serial=serial,
        nics=nics,
    )
    ctx.add_vm(record)
    return name


def _repeated(ctx: StepContext, existing: VmRecord, body: CreateVm, size: str) -> VmName | VmReply:
    """A create of a VM that exists: the VM itself if the request is the same, else a
    conflict (a VM that named no region has its networks' region)."""
    region = networks.region_of(ctx.state, body.nics, body.region)
    spec = (existing.size, existing.image, existing.region, existing.availability_set)
    same = spec == (size, body.image, region, body.availability_set)
    kinds = {disk.storage for disk in existing.disks}
    same = same and (body.storage is None or kinds <= {body.storage})
    if same and networks.same_nics(existing, body.nics):
        return existing.name
    return vm_error(ErrorCode.CONFLICT, f"vm {existing.name!r} exists with a different spec")


def change(ctx: StepContext, op: Op, name: VmName) -> VmName | VmReply:
    """Stop, start or delete a VM."""
    record = ctx.state.vms.get(name)
    if record is None:
        return vm_error(ErrorCode.NOT_FOUND, f"vm {name!r} does not exist")
    state = record.state
    if state is VmState.DELETED and op is not Op.DELETE:
        return vm_error(ErrorCode.NOT_FOUND, f"vm {name!r} was deleted")
    if state is VmState.DELETING and op is not Op.DELETE:
        return vm_error(ErrorCode.INVALID_STATE, f"vm {name!r} is being deleted")
    if op in (Op.STOP, Op.DELETE) and record.migration is not None:
        migration_flow.abandon(ctx, record, f"{op} requested")
    if op is Op.STOP:
        lifecycle.stop(ctx, record)
    elif op is Op.START:
        if state in (VmState.STOPPED, VmState.FAILED):
            ctx.change_vm(
                record,
                state=VmState.PENDING,
                reason="waiting for placement",
                pending_since=ctx.now.wall,
                start_attempts=0,
                failed_hosts=[],
            )
            ctx.want_placement(name)
    else:
        lifecycle.delete(ctx, record)
    return name


def expire_pending(ctx: StepContext) -> None:
    limit_s = ctx.config.placement_timeout_s
    for name in list(ctx.state.pending):
        record = ctx.state.vms[name]
        since = record.pending_since or record.created_at
        if (ctx.now.wall - since).total_seconds() > limit_s and not _disk_down(ctx, record):
            why = f"placement timed out after {limit_s:g}s: {record.reason}"
            ctx.change_vm(record, state=VmState.FAILED, reason=why, recovering=False)


def _disk_down(ctx: StepContext, record: VmRecord) -> bool:
    """The VM waits for a lost copy of its disk that may come back: no timeout ends that."""
    disk = replicas.every_copy_lost(record)
    return disk is not None and not copyloss.gone_for_good(ctx.state, disk)


def place_pending(ctx: StepContext, *, everything: bool) -> None:
    """Place the VMs that became pending (``everything``: all pending VMs), at most
    ``PLACED_PER_STEP`` of them; the others wait for the next step, in order."""
    carry, state = ctx.carry, ctx.state
    names = _to_place(ctx, everything=everything)
    names, carry.new_pending = names[:PLACED_PER_STEP], names[PLACED_PER_STEP:]
    if not names:
        return
    records = [state.vms[name] for name in names]
    records = [r for r in records if not r.nics or networks.ensure_addresses(ctx, r)]
    sets = {r.availability_set for r in records if r.availability_set is not None}
    members = {s: ctx.views.set_fault_domains(s) for s in sets}
    starts: dict[HostId, list[AgentCommand]] = defaultdict(list)
    recovered: dict[HostId, int] = defaultdict(int)
    reserved: set[HostId] = set()
    index = ctx.views.index()
    for record in records:
        if not copyloss.placeable(ctx, record):
            continue
        if replicas.is_replicated(record):
            # Its copies go where earlier placements of this step may have placed others: the
            # index sees them (the VMs' own placements it holds already, as reservations).
            index = ctx.views.index()
        result = _place_one(ctx, record, index, members, reserved)
        if not isinstance(result, Placed):
            reason = result if isinstance(result, str) else result.summary()
            if record.reason != reason:
                ctx.change_vm(record, reason=reason)
                ctx.emit_vm(record)
            continue
        if record.recovering:
            if recovered[result.host_id] >= ctx.config.recovery_per_host_per_tick:
                ctx.capacity_changed()  # try again next tick
                continue
            recovered[result.host_id] += 1
        command = _schedule(ctx, record, result.host_id)
        if command is not None:
            starts[result.host_id].append(command)
    # A placement not carried out below must not linger as a reservation in the index.
    state.stale_views.update(reserved)
    for host, commands in starts.items():
        # The host's network configuration first, in the same batch: its VMs' bridges exist
        # before they start.
        ctx.send(host, hostnets.due(ctx, host) + commands)


def _to_place(ctx: StepContext, *, everything: bool) -> list[VmName]:
    """The VMs still pending that became pending (``everything``: then every pending VM, and
    the request to try them all is cleared), in order. One that became pending may have been
    deleted or stopped since, in the same step (a starved scheduler takes a create, its delete
    and a tick in one)."""
    carry, pending = ctx.carry, ctx.state.pending
    names = [n for n in dict.fromkeys(carry.new_pending) if n in pending]
    if everything:
        carry.capacity_changed = False
        names = list(dict.fromkeys([*names, *pending]))
    return names


def _place_one(
    ctx: StepContext,
    record: VmRecord,
    index: HostIndex,
    members: dict[str, dict[str, int]],
    reserved: set[HostId],
) -> Placed | Unplaceable | str:
    """Choose the VM's host (and the hosts of its new disk copies), reserving it in the index;
    a string says why its copies have no room.

    The index is brought up to date from the records once per step, not once per VM: the VMs
    placed before in this step are in it as reservations (their records, changed since, are
    looked at again at the next step: ``stale_views``). At 1,000 hosts a refresh per VM was
    a twentieth of a create's cost."""
    replicated = replicas.is_replicated(record)
    request = PlacementRequest(
        record.name,
        record.resources,
        record.region,
        record.availability_set,
        frozenset(record.failed_hosts),
        pinned_host=None if replicated else disks.pinned_host(ctx, record),
        disk_mib=replicas.disk_demand_mib(record),
        preferred_hosts=replicas.preferred_hosts(ctx.state, record) if replicated else (),
    )
    counts = members.get(record.availability_set or "")
    result = index.place(request, ctx.policy, counts)
    if not isinstance(result, Placed):
        return result
    index.reserve(result.host_id, request.resources, request.disk_mib)
    reserved.add(result.host_id)
    if replicated:
        problem = replicas.place_copies(ctx, record, result.host_id)
        if problem is not None:
            return problem
    if counts is not None:
        domain = ctx.state.hosts[result.host_id].fault_domain
        counts[domain] = counts.get(domain, 0) + 1
    return result


def _schedule(ctx: StepContext, record: VmRecord, host: HostId) -> AgentCommand | None:
    """The VM goes to ``host``: its StartVm, or None while its disk copies are not ready."""
    endpoints = networks.placed_endpoints(ctx, record, host)
    ready = not replicas.is_replicated(record) or replicas.ready(ctx.state, record)
    reason = "" if ready else replicas.WAITING
    ctx.change_vm(record, state=VmState.SCHEDULED, host=host, reason=reason, endpoints=endpoints)
    if not ready:
        return None
    return StartVm(vm=replicas.vm_spec(ctx.state, record), generation=record.generation)
