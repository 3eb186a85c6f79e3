"""Drain: move every VM off a host for maintenance, a few at a time. Pure.

A drained host is cordoned (no new placements) and its VMs are moved one by one. A running VM
migrates live (scheduler/core/migrations.py, cause ``drain``) to a host placement picks. A VM
that cannot (not running, a driver that cannot migrate, a failed migration), or every VM of a
``--cold`` drain, moves by stop and start: the core stops the VM on the draining host
(``StopVm``), and only once the host reports it gone does it put the VM back to ``pending``
with a new generation, so placement starts it on another host. Stop before start keeps the
rule that a VM never runs twice. At most ``parallelism`` VMs of a host are on the move at once
(migrating, stopping, pending, or starting elsewhere).

A drain is refused up front, changing nothing, when the VMs to move would not all fit on the
other hosts (``insufficient_capacity``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from common.ids import HostId, VmName
from common.messages import VmState
from scheduler.placement.index import place_batch
from scheduler.placement.pipeline import PlacementPolicy, Unplaceable
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostView, PlacementRequest, VmRecord

MOVABLE_STATES = frozenset({VmState.SCHEDULED, VmState.STARTING, VmState.RUNNING})
"""States in which a VM on a draining host is moved; a VM stopping or being deleted is left
to finish (it leaves the host anyway)."""


@dataclass(frozen=True, slots=True)
class DrainStep:
    """What a draining host needs now."""

    host_id: HostId
    move: tuple[VmName, ...]
    """VMs to start moving (stop on the draining host), in name order."""
    remaining: int
    """VMs of the host not yet running elsewhere (before this step's moves start)."""

    @property
    def done(self) -> bool:
        return self.remaining == 0


def movable(state: ClusterState, host: HostId) -> list[VmRecord]:
    """The VMs on ``host`` that its drain has still to move, in name order."""
    records = (state.vms[name] for name in state.by_host.get(host, ()))
    return sorted(
        (
            r
            for r in records
            if r.state in MOVABLE_STATES and r.drained_from is None and r.migration is None
        ),
        key=lambda r: r.name,
    )


def failed_live(state: ClusterState, host: HostId) -> list[VmRecord]:
    """VMs whose live move off ``host`` ended without a switchover: to move by stop and start."""
    records = (state.vms[name] for name in state.by_host.get(host, ()))
    return sorted(
        (
            r
            for r in records
            if r.drained_from == host and r.migration is None and r.state in MOVABLE_STATES
        ),
        key=lambda r: r.name,
    )


def moving(state: ClusterState) -> Counter[HostId]:
    """Per draining host, how many VMs are on the move off it (one scan of the VMs)."""
    if not any(record.draining for record in state.hosts.values()):
        return Counter()
    return Counter(r.drained_from for r in state.vms.values() if r.drained_from is not None)


def remaining(state: ClusterState, host: HostId, on_the_move: Mapping[HostId, int]) -> int:
    """VMs on ``host`` (holding capacity there) plus those moved off it not yet running elsewhere,
    plus those migrating live *to* it (begun before the drain: they land, then move on).

    A VM being stopped by the drain is on the host and on the move: counted once.
    """
    on_host = state.by_host.get(host, ())
    stopping_here = sum(1 for name in on_host if state.vms[name].drained_from == host)
    arriving = len(state.incoming.get(host, ()))
    return len(on_host) + on_the_move.get(host, 0) - stopping_here + arriving


def remaining_by_host(state: ClusterState) -> dict[HostId, int]:
    """``remaining`` for every draining host (for the read API)."""
    on_the_move = moving(state)
    return {
        host: remaining(state, host, on_the_move)
        for host, record in state.hosts.items()
        if record.draining
    }


def plan_drain(
    state: ClusterState, host: HostId, parallelism: int, on_the_move: Mapping[HostId, int]
) -> DrainStep:
    """Which VMs of ``host`` to start moving now, keeping at most ``parallelism`` on the move."""
    slots = max(0, parallelism - on_the_move.get(host, 0))
    move = tuple(r.name for r in movable(state, host)[:slots])
    return DrainStep(host, move, remaining(state, host, on_the_move))


def check_capacity(
    state: ClusterState,
    host: HostId,
    views: Mapping[HostId, HostView],
    policy: PlacementPolicy,
    set_members: Mapping[str, Mapping[str, int]],
) -> str | None:
    """Why the VMs still to move off ``host`` cannot all be placed on other hosts, or None.

    Places them all at once on the other hosts as they are now, as the placement pipeline
    would; VMs already waiting for capacity elsewhere are not counted.
    """
    records = movable(state, host)
    if not records:
        return None
    requests = [
        PlacementRequest(r.name, r.resources, r.region, r.availability_set) for r in records
    ]
    others = {h: view for h, view in views.items() if h != host}
    results = place_batch(requests, others, policy, set_members)
    failed = [
        (record, result)
        for record, result in zip(records, results, strict=True)
        if isinstance(result, Unplaceable)
    ]
    if not failed:
        return None
    record, first = failed[0]
    return (
        f"cannot drain {host}: {len(failed)} of its {len(records)} vms would fit on no other "
        f"host (first: {record.name}: {first.summary()}); nothing changed"
    )
