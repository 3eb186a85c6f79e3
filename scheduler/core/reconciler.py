"""Desired against observed for one host: the commands and transitions that close the gap.

Pure and level-triggered: it is called with a host's full inventory from each heartbeat, so a
lost command or report only delays convergence by one heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from common.ids import HostId, VmName
from common.messages import (
    AgentCommand,
    DeleteVm,
    DiskSpec,
    ObservedState,
    ObservedVm,
    ResumeVm,
    StartVm,
    StopVm,
    VmSpec,
    VmState,
)
from common.migration_messages import FinishIncoming
from common.network_messages import NicSpec
from scheduler.state.model import VmRecord


class Outcome(StrEnum):
    """What the core must do to a VM record after looking at its host's inventory."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"
    START_FAILED = "start_failed"
    VANISHED = "vanished"


@dataclass(frozen=True, slots=True)
class Transition:
    name: VmName
    outcome: Outcome
    reason: str = ""
    retryable: bool = False


@dataclass(slots=True)
class HostReconcile:
    transitions: list[Transition] = field(default_factory=list)
    commands: list[AgentCommand] = field(default_factory=list)
    orphans: list[ObservedVm] = field(default_factory=list)
    """VMs on the host that are not desired there (stale copies being destroyed)."""
    waiting: list[VmName] = field(default_factory=list)
    """VMs to start that may not start yet (their disk copies are not ready)."""


SpecOf = Callable[[VmRecord], VmSpec | None]
"""The spec a VM starts with; None while it may not start yet."""


def spec_of(record: VmRecord) -> VmSpec:
    """What the agent needs of the record: its fields by name (disks as ``DiskSpec``).

    Built field by field, not with ``msgspec.convert(..., from_attributes=True)``, which
    matched the VM name against its pattern again for every spec (a record's fields were
    checked when its request was decoded); the same fields, as tests/unit/scheduler/
    test_reconciler.py checks against the conversion."""
    return VmSpec(
        name=record.name,
        size=record.size,
        cpu_milli=record.cpu_milli,
        mem_mib=record.mem_mib,
        image=record.image,
        disks=[
            DiskSpec(
                disk_id=d.disk_id,
                kind=d.kind,
                size_mib=d.size_mib,
                image=d.image,
                image_sha256=d.image_sha256,
                storage=d.storage,
            )
            for d in record.disks
        ],
        nics=[
            NicSpec(
                index=n.index,
                vnet=n.vnet,
                vni=n.vni,
                mac=n.mac,
                ip=n.ip,
                prefix_len=n.prefix_len,
                gateway=n.gateway,
            )
            for n in record.nics
        ],
    )


def reconcile_host(
    host: HostId,
    assigned: Mapping[VmName, VmRecord],
    observed: Mapping[VmName, ObservedVm],
    incoming: Mapping[VmName, int] | None = None,
    start_spec: SpecOf = spec_of,
) -> HostReconcile:
    """Compare the VMs assigned to ``host`` (desired) with its inventory (observed).

    ``assigned`` holds the records whose ``host`` is this host and that hold capacity there;
    ``incoming`` the attempt numbers of the live migrations coming to it (their copies here,
    at exactly that generation, are the migrations' to manage: scheduler/core/migrations.py).
    Every other observed VM that is not one of them, or is an older generation, is stale: only
    the scheduler's word destroys it, and this is that word. ``start_spec`` gives the spec of
    a VM to start (None: not yet, it waits).
    """
    result = HostReconcile()
    expected = incoming or {}
    for name, record in assigned.items():
        _reconcile_assigned(record, observed.get(name), result, start_spec)
    for name, seen in observed.items():
        mine = assigned.get(name)
        if mine is None and expected.get(name) == seen.generation:
            continue
        if mine is None or seen.generation > mine.generation:
            result.orphans.append(seen)
            result.commands.append(DeleteVm(name=name, generation=seen.generation))
    return result


def _reconcile_assigned(
    record: VmRecord, seen: ObservedVm | None, out: HostReconcile, start_spec: SpecOf
) -> None:
    gen = record.generation
    if seen is not None and seen.generation > gen:
        return  # a newer copy than we know of cannot be ours: destroyed as an orphan first
    current = seen if seen is not None and seen.generation == gen else None
    match record.state:
        case VmState.STOPPING:
            if seen is None:
                out.transitions.append(Transition(record.name, Outcome.STOPPED))
            elif seen.generation <= gen:
                out.commands.append(StopVm(name=record.name, generation=gen))
        case VmState.DELETING:
            if seen is None:
                out.transitions.append(Transition(record.name, Outcome.DELETED))
            elif seen.generation <= gen:
                out.commands.append(DeleteVm(name=record.name, generation=gen))
        case VmState.SCHEDULED | VmState.STARTING | VmState.RUNNING:
            _reconcile_wanted_running(record, current, out, start_spec)
        case _:
            pass


def _start(record: VmRecord, out: HostReconcile, start_spec: SpecOf) -> None:
    spec = start_spec(record)
    if spec is None:
        out.waiting.append(record.name)
    else:
        out.commands.append(StartVm(vm=spec, generation=record.generation))


def _reconcile_wanted_running(
    record: VmRecord, current: ObservedVm | None, out: HostReconcile, start_spec: SpecOf
) -> None:
    name, gen = record.name, record.generation
    if current is None:
        if record.state is VmState.RUNNING:
            out.transitions.append(
                Transition(name, Outcome.VANISHED, "vm vanished from its host; starting it again")
            )
        # An older copy, if any, is replaced by the agent when it executes StartVm.
        _start(record, out, start_spec)
        return
    match current.state:
        case ObservedState.STARTING:
            if record.state is not VmState.STARTING:
                out.transitions.append(Transition(name, Outcome.STARTING))
        case ObservedState.RUNNING:
            if record.state is not VmState.RUNNING:
                out.transitions.append(Transition(name, Outcome.RUNNING))
        case ObservedState.PAUSED:
            # The host fenced it while out of touch; its generation is still current.
            out.commands.append(ResumeVm(name=name, generation=gen))
        case ObservedState.FAILED:
            out.transitions.append(
                Transition(name, Outcome.START_FAILED, current.reason, current.retryable)
            )
            out.commands.append(DeleteVm(name=name, generation=gen))
        case ObservedState.STOPPING | ObservedState.STOPPED:
            _start(record, out, start_spec)
        case ObservedState.INCOMING:
            # A migrated VM whose switchover is stored (it is this host's at this generation):
            # the destination may let it run now.
            out.commands.append(FinishIncoming(name=name, generation=gen))
        case ObservedState.HANDED_OVER:
            # Its state went to a migration's destination: it never runs here again, and the
            # migration (scheduler/core/migrations.py) switches the VM over.
            pass
