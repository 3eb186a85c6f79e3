"""The rebalancer: which live migrations to start now. Pure and deterministic.

Like DRS, it runs in rounds (at most one per ``interval_s``) and plans moves ``Move(vm, source,
target)`` that the shell carries out as live migrations:

* **binpack** frees hosts: a host in use filled less than ``empty_below`` is emptied onto the
  other hosts in use, and only if every one of its VMs fits there (otherwise none moves), so
  each emptied host is one host fewer in use. Hosts with the fewest VMs go first (fewest
  migrations per host freed).
  Then it **makes room** (as DRS does to admit a large VM): while fewer than ``room_hosts``
  hosts in use have room for a ``room_for`` VM, the hosts closest to having it give the
  fewest of their VMs (the smallest that frees the room alone, else up to ``MAX_ROOM_MOVES``
  of the largest) to hosts in use that had no such room anyway, so a burst of large VMs finds
  room without opening hosts while the small holes fill up. A host gets room whole or not at
  all, and no move takes room from another host.
* **spread** evens hosts out: a VM moves from the fullest hosts to the host ``place`` picks
  for it (the emptiest that passes every filter) when that narrows the two hosts' fill gap by
  at least ``spread_margin``.

Every target is chosen by the placement index with the placement filters (region, cordon,
availability set, capacity with overcommit), seeing the capacity that moves planned earlier
in the same round reserve; a member of an availability set moves only within its fault domain
or to one holding fewer members, so no move leaves a set less spread.

Nothing is planned while any host is down, from or to a host that is cordoned, draining or
down, for a VM in its cool-down (``cooldown_s`` after its last migration started), beyond
``max_migrations_per_hour`` moves in any rolling hour (``MigrationBudget``, returned updated),
or beyond ``max_migrations_per_host`` migrations at once touching one host.

Work per round: one ``HostIndex`` over the candidate targets (O(n log n) in hosts), the fill of
every host, then at most ``max_hosts_per_round`` hosts tried, each with at most
``max_migrations_per_host`` placements on the index; making room sorts the hosts in use by
what they lack and tries at most ``max_hosts_per_round`` less the hosts emptied, each with at
most ``MAX_ROOM_MOVES`` placements. Calls between rounds return at once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec

from common.config import RebalanceConfig
from common.ids import HostId, VmName
from common.resources import ZERO, Resources
from scheduler.placement.index import HostIndex
from scheduler.placement.pipeline import Placed, PlacementPolicy
from scheduler.state.model import HostView, PlacementRequest

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class RebalanceVm:
    """A VM holding capacity on a host, as the rebalancer sees it."""

    name: VmName
    resources: Resources
    availability_set: str | None = None
    last_migrated_s: float | None = None
    """When its last migration started (monotonic seconds); None: never migrated."""
    movable: bool = True
    """False when it cannot be live-migrated now (not running, already migrating, ...)."""


@dataclass(frozen=True, slots=True)
class Cluster:
    """What a round looks at: the hosts and what runs on them."""

    hosts: Sequence[HostView]
    """Every host; ``allocated`` includes the capacity migrations in flight hold on both ends."""
    vms: Mapping[HostId, Collection[RebalanceVm]]
    """The VMs holding capacity on each host (a migrating VM: on its source, not movable)."""
    draining: Collection[HostId] = frozenset()
    in_flight: Mapping[HostId, int] = field(default_factory=dict)
    """Migrations running per host (as source or target)."""
    set_members: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Per availability set, its members per fault domain (as ``place`` takes them)."""


@dataclass(frozen=True, slots=True)
class Move:
    vm: VmName
    source: HostId
    target: HostId


@dataclass(frozen=True, slots=True)
class MigrationBudget:
    """The rebalancer's memory between rounds: when it last planned, and what it started."""

    started_s: tuple[float, ...] = ()
    """Start times of the moves planned in the last hour, oldest first."""
    last_round_s: float | None = None

    def used(self, now_s: float) -> int:
        return sum(1 for t_s in self.started_s if now_s - t_s < HOUR_S)


class Idle(StrEnum):
    """Why a call planned nothing without looking at the hosts."""

    DISABLED = "disabled"
    NOT_DUE = "not_due"
    HOST_DOWN = "host_down"
    BUDGET_SPENT = "budget_spent"


@dataclass(frozen=True, slots=True)
class Plan:
    moves: tuple[Move, ...]
    budget: MigrationBudget
    idle: Idle | None = None
    """Set when the round was skipped, and why."""


def plan_moves(
    cluster: Cluster,
    policy: PlacementPolicy,
    config: RebalanceConfig,
    budget: MigrationBudget,
    now_s: float,
) -> Plan:
    """The moves to start at ``now_s``, and the budget to pass to the next call."""
    if not config.enabled:
        return Plan((), budget, Idle.DISABLED)
    last_s = budget.last_round_s
    if last_s is not None and now_s - last_s < config.interval_s:
        return Plan((), budget, Idle.NOT_DUE)
    recent = tuple(t_s for t_s in budget.started_s if now_s - t_s < HOUR_S)
    budget = MigrationBudget(recent, now_s)
    if any(not view.up for view in cluster.hosts):
        return Plan((), budget, Idle.HOST_DOWN)
    allowance = config.max_migrations_per_hour - len(recent)
    if allowance <= 0:
        return Plan((), budget, Idle.BUDGET_SPENT)
    round_ = _Round(cluster, config, now_s, allowance)
    if policy.scorer == "spread":
        round_.even_out()
    else:
        round_.free_hosts()
    moves = tuple(round_.moves)
    return Plan(moves, MigrationBudget(recent + (now_s,) * len(moves), now_s))


def fill(view: HostView) -> float:
    """How full a host is: the larger of its CPU and memory fractions of schedulable capacity."""
    cap, used = view.schedulable, view.allocated
    return max(used.cpu_milli / max(cap.cpu_milli, 1), used.mem_mib / max(cap.mem_mib, 1))


class _Round:
    """One planning round: an index of candidate targets and the moves planned so far."""

    def __init__(
        self, cluster: Cluster, config: RebalanceConfig, now_s: float, allowance: int
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.now_s = now_s
        self.allowance = allowance
        self.moves: list[Move] = []
        self.load = {host: n for host, n in cluster.in_flight.items() if n > 0}
        """Migrations touching each host: in flight, plus those planned this round."""
        self.members = {name: dict(counts) for name, counts in cluster.set_members.items()}
        self.sources: set[HostId] = set()
        """Hosts that gave VMs this round: they receive none in it."""
        self.touched: set[HostId] = set()
        """Hosts that received or gave VMs this round: not a source again in it."""
        self.at_limit: set[HostId] = set()
        """Hosts with ``max_migrations_per_host`` migrations: they receive none either."""
        self.index = HostIndex(())

    def eligible(self, view: HostView) -> bool:
        """May take part at all: up, not cordoned, not draining."""
        return view.up and not view.cordoned and view.host_id not in self.cluster.draining

    def movable(self, vm: RebalanceVm) -> bool:
        last_s = vm.last_migrated_s
        cooled = last_s is None or self.now_s - last_s >= self.config.cooldown_s
        return vm.movable and cooled

    # ------------------------------------------------------------------------------ binpack

    def free_hosts(self) -> None:
        """Empty the hosts in use with the fewest VMs onto the other hosts in use."""
        in_use = [v for v in self.cluster.hosts if self.eligible(v) and v.allocated != ZERO]
        self._build_index(in_use)
        sources: list[tuple[int, float, HostId, HostView]] = []
        for view in in_use:
            level = fill(view)
            if level >= self.config.empty_below or self.load.get(view.host_id, 0) > 0:
                continue
            vms = self.cluster.vms.get(view.host_id, ())
            if 0 < len(vms) <= self.config.max_migrations_per_host and all(map(self.movable, vms)):
                sources.append((len(vms), level, view.host_id, view))
        sources.sort(key=lambda s: s[:3])
        for count, _, host, view in sources[: self.config.max_hosts_per_round]:
            if count <= self.allowance and host not in self.touched:
                self._empty(view, self.cluster.vms[host])
        self.make_room()

    def _empty(self, source: HostView, vms: Collection[RebalanceVm]) -> None:
        """Plan moves for every VM on ``source``, or none."""
        planned: list[tuple[RebalanceVm, HostId]] = []
        for vm in sorted(vms, key=_largest_first):
            target = self._place(vm, source, PlacementPolicy("binpack"))
            if target is None:
                for done, where in reversed(planned):
                    self._unreserve(done, source, where)
                return
            planned.append((vm, target))
        self._close_source(source.host_id)
        self.touched.update(target for _, target in planned)
        self.allowance -= len(planned)
        self.moves.extend(Move(vm.name, source.host_id, target) for vm, target in planned)

    # ---------------------------------------------------------------------------- make room

    def make_room(self) -> None:
        """While fewer than ``room_hosts`` hosts in use have room for ``room_for``, give the
        hosts closest to having it that room: move their fewest, smallest VMs to hosts in use
        that stay without room anyway (best fit puts them in the tightest holes)."""
        room, want = self.config.room, self.config.room_hosts
        open_ = [view for view in self.index.views if not view.cordoned]
        have = sum(1 for view in open_ if room.fits(view.free))
        if have >= want:
            return
        closest = sorted(
            (_shortfall(view.free, room), view.host_id)
            for view in open_
            if not room.fits(view.free)
            and room.fits(view.schedulable)
            and self.load.get(view.host_id, 0) == 0
        )
        tries = self.config.max_hosts_per_round - len(self.sources)
        for _, host in closest[: max(tries, 0)]:
            if have >= want or self.allowance <= 0:
                return
            if host in self.touched:
                continue
            source = self.index.view(host)
            vms = [vm for vm in self.cluster.vms.get(host, ()) if self.movable(vm)]
            chosen = _covering(vms, room - source.free)
            if chosen is None or any(room.fits(vm.resources) for vm in chosen):
                continue  # a VM as large as the room could only go where room is, taking it
            limit = min(self.allowance, self.config.max_migrations_per_host)
            if len(chosen) <= limit and self._clear(source, chosen, room):
                have += 1

    def _clear(self, source: HostView, vms: Sequence[RebalanceVm], room: Resources) -> bool:
        """Plan moves for ``vms`` off ``source`` to hosts that had no room for ``room``
        either, or none."""
        planned: list[tuple[RebalanceVm, HostId]] = []
        for vm in vms:
            target = self._place(vm, source, PlacementPolicy("binpack"))
            if target is not None and room.fits(self.index.view(target).free + vm.resources):
                self._unreserve(vm, source, target)  # it would take room from the target
                target = None
            if target is None:
                for done, where in reversed(planned):
                    self._unreserve(done, source, where)
                return False
            planned.append((vm, target))
        for vm in vms:
            self.index.release(source.host_id, vm.resources)
        self._close_source(source.host_id)
        self.touched.update(target for _, target in planned)
        self.allowance -= len(planned)
        self.moves.extend(Move(vm.name, source.host_id, target) for vm, target in planned)
        return True

    # ------------------------------------------------------------------------------- spread

    def even_out(self) -> None:
        """Move VMs from the fullest hosts to the emptiest while that narrows their gap."""
        eligible = [v for v in self.cluster.hosts if self.eligible(v)]
        self._build_index(eligible)
        ranked = sorted(eligible, key=lambda v: (-fill(v), v.host_id))
        for view in ranked[: self.config.max_hosts_per_round]:
            if self.allowance <= 0:
                break
            if view.host_id in self.touched:
                continue
            self._relieve(view.host_id)

    def _relieve(self, host: HostId) -> None:
        """Move VMs off ``host`` one at a time while each narrows a gap by the margin."""
        vms = sorted(
            (vm for vm in self.cluster.vms.get(host, ()) if self.movable(vm)), key=_largest_first
        )
        spread = PlacementPolicy("spread")
        self._close_source(host)
        for vm in vms:
            if self.allowance <= 0 or self.load.get(host, 0) >= self.config.max_migrations_per_host:
                return
            source = self.index.view(host)
            target = self._place(vm, source, spread)
            if target is None:
                continue
            after_source = fill(
                msgspec.structs.replace(source, allocated=source.allocated - vm.resources)
            )
            after_target = fill(self.index.view(target))
            if max(after_source, after_target) > fill(source) - self.config.spread_margin:
                self._unreserve(vm, source, target)
                continue
            self.index.release(host, vm.resources)
            self._count_load(host, +1)
            self.touched.update((host, target))
            self.allowance -= 1
            self.moves.append(Move(vm.name, host, target))

    # ------------------------------------------------------------------------------ helpers

    def _build_index(self, views: Sequence[HostView]) -> None:
        limit = self.config.max_migrations_per_host
        self.at_limit = {v.host_id for v in views if self.load.get(v.host_id, 0) >= limit}
        self.index = HostIndex(
            msgspec.structs.replace(v, cordoned=True) if v.host_id in self.at_limit else v
            for v in views
        )

    def _place(self, vm: RebalanceVm, source: HostView, policy: PlacementPolicy) -> HostId | None:
        """A target for ``vm`` leaving ``source`` chosen by the index, reserved; or None."""
        req = PlacementRequest(
            vm.name,
            vm.resources,
            region=source.region,
            availability_set=vm.availability_set,
            avoid_hosts=frozenset({source.host_id}),
        )
        counts = None
        if vm.availability_set is not None:
            counts = self.members.setdefault(vm.availability_set, {})
            _bump(counts, source.fault_domain, -1)  # placed as if it were not there yet
        result = self.index.place(req, policy, counts)
        domain = self.index.view(result.host_id).fault_domain if isinstance(result, Placed) else ""
        if not isinstance(result, Placed) or not _keeps_set_spread(counts, source, domain):
            if counts is not None:
                _bump(counts, source.fault_domain, +1)
            return None
        target = result.host_id
        if counts is not None:
            _bump(counts, domain, +1)
        self.index.reserve(target, vm.resources)
        self._count_load(target, +1)
        return target

    def _unreserve(self, vm: RebalanceVm, source: HostView, target: HostId) -> None:
        """Take back a reservation ``_place`` made."""
        if vm.availability_set is not None:
            counts = self.members[vm.availability_set]
            _bump(counts, self.index.view(target).fault_domain, -1)
            _bump(counts, source.fault_domain, +1)
        self.index.release(target, vm.resources)
        self._count_load(target, -1)

    def _count_load(self, host: HostId, delta: int) -> None:
        load = self.load[host] = self.load.get(host, 0) + delta
        if load >= self.config.max_migrations_per_host:
            self.at_limit.add(host)
        else:
            self.at_limit.discard(host)
        self._refresh(host)

    def _close_source(self, host: HostId) -> None:
        self.touched.add(host)
        self.sources.add(host)
        self._refresh(host)

    def _refresh(self, host: HostId) -> None:
        """Hide ``host`` from placement while it may not receive (sources, hosts at the limit:
        as cordoned in the index), and show it again once it may."""
        if host not in self.index:
            return
        closed = host in self.sources or host in self.at_limit
        view = self.index.view(host)
        if view.cordoned != closed:
            self.index.update(msgspec.structs.replace(view, cordoned=closed))


MAX_ROOM_MOVES = 3
"""Moves at most to make room on one host."""


def _shortfall(free: Resources, room: Resources) -> float:
    """How much of ``room`` a host lacks: the larger of the CPU and memory fractions."""
    cpu = (room.cpu_milli - free.cpu_milli) / max(room.cpu_milli, 1)
    mem = (room.mem_mib - free.mem_mib) / max(room.mem_mib, 1)
    return max(cpu, mem)


def _covering(vms: Sequence[RebalanceVm], lack: Resources) -> list[RebalanceVm] | None:
    """The fewest of ``vms`` (at most ``MAX_ROOM_MOVES``) that free ``lack`` between them:
    the smallest that frees it alone, else the largest first; None if they cannot."""
    need = Resources(max(lack.cpu_milli, 0), max(lack.mem_mib, 0))
    ranked = sorted(vms, key=lambda vm: (vm.resources.cpu_milli, vm.resources.mem_mib, vm.name))
    for vm in ranked:
        if need.fits(vm.resources):
            return [vm]
    chosen: list[RebalanceVm] = []
    for vm in reversed(ranked[-MAX_ROOM_MOVES:]):
        chosen.append(vm)
        need = need - vm.resources
        if need.cpu_milli <= 0 and need.mem_mib <= 0:
            return chosen
    return None


def _largest_first(vm: RebalanceVm) -> tuple[int, int, str]:
    return (-vm.resources.mem_mib, -vm.resources.cpu_milli, vm.name)


def _keeps_set_spread(counts: Mapping[str, int] | None, source: HostView, domain: str) -> bool:
    """A set member leaves its fault domain only for one holding fewer members (``counts``
    leaves the member out), so the set is never less spread than before. ``place`` alone
    compares only the domains of the candidate targets, which are the hosts in use."""
    if counts is None or domain == source.fault_domain:
        return True
    return counts.get(domain, 0) <= counts.get(source.fault_domain, 0)


def _bump(counts: dict[str, int], domain: str, delta: int) -> None:
    counts[domain] = counts.get(domain, 0) + delta
