"""Replay a VM trace through the scheduler's placement and rebalancer; count the hosts it needs.
Pure.

Arrivals are placed with the same ``HostIndex`` the scheduler's ``place_batch`` uses, one at a
time in arrival order; departures give the capacity back. Time is the trace's own: the replay
jumps from event to event (as fast as the CPU allows), and integrates over trace time the hosts
in use (hosts holding at least one VM) and the lower bound ``max(Σcpu / host_cpu, Σmem /
host_mem)`` of the VMs running at that moment.

The rebalancer is the scheduler's own (``rebalance.plan_moves``), called every ``interval_s``
of trace time with the knobs of ``SimPolicy.rebalance`` (by default the scheduler's defaults).
Each move it plans is one migration, which takes ``migration_s`` of trace time (a fixed setup
cost plus the guest's memory at a modelled bandwidth); meanwhile the VM holds its capacity on
both hosts, as in the product, and both count as in use. A VM that leaves during its migration
frees both.

``group_batches`` (optional): a VM whose batch (one tenant's simultaneous requests) already runs
on some hosts goes to one of those if it fits there, chosen by the same ``place`` among them.

Readers for the Azure 2017 and Alibaba 2023 traces (see the workloads README for their
sources and licences) take lines of text, so this module opens no files.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from common.config import RebalanceConfig, SchedulerConfig
from common.ids import HostId, VmName
from common.resources import ZERO, Resources
from scheduler.placement.index import HostIndex
from scheduler.placement.pipeline import Placed, PlacementPolicy, place
from scheduler.placement.rebalance import (
    HOUR_S,
    Cluster,
    MigrationBudget,
    Move,
    RebalanceVm,
    plan_moves,
)
from scheduler.state.model import HostView, PlacementRequest

ScorerName = Literal["binpack", "spread"]

SHORTEST_BIN_S = 150.0
"""Lifetime used for Azure VMs in duration bin 0 (under 300 s): the middle of that bin."""


@dataclass(frozen=True, slots=True)
class TraceVm:
    vm_id: str
    arrival_s: float
    departure_s: float | None
    """None: still running when the trace ends."""
    batch: str
    resources: Resources


MIGRATION_SETUP_S = 10.0
MIGRATION_GIB_PER_S = 0.5
"""A simulated migration takes ``MIGRATION_SETUP_S`` plus the guest's memory at this rate
(about 4 Gbit/s of pre-copy): 38 s for a 14 GiB guest."""

_DEFAULTS = SchedulerConfig()


def migration_s(resources: Resources) -> float:
    return MIGRATION_SETUP_S + resources.mem_mib / 1024 / MIGRATION_GIB_PER_S


@dataclass(frozen=True, slots=True)
class SimPolicy:
    """What the replay runs: by default the scheduler's default scorer and rebalancer."""

    scorer: ScorerName = _DEFAULTS.scorer
    group_batches: bool = False
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)
    """The scheduler's defaults unless given (``SchedulerConfig.rebalance``)."""

    @classmethod
    def plain(cls, scorer: ScorerName = "binpack") -> SimPolicy:
        """The scorer alone: no rebalancer."""
        return cls(scorer, rebalance=RebalanceConfig(enabled=False))


@dataclass(slots=True)
class SimResult:
    vms: int = 0
    placed: int = 0
    rejected: int = 0
    migrations: int = 0
    vms_migrated: int = 0
    """VMs migrated at least once."""
    busiest_hour_migrations: int = 0
    """The most migrations started in any rolling hour of trace time."""
    peak_hosts: int = 0
    peak_lower_bound: float = 0.0
    host_seconds: float = 0.0
    """∫ hosts in use dt, over the arrivals' span."""
    lower_bound_seconds: float = 0.0
    """∫ lower bound dt, over the same span."""
    vm_seconds: float = 0.0
    """∫ VMs running dt, over the same span."""
    series: list[tuple[float, int, float]] = field(default_factory=list)
    """``(t_s, hosts in use, lower bound)`` sampled every ``sample_every_s``."""

    @property
    def time_averaged_ratio(self) -> float:
        if self.lower_bound_seconds <= 0:
            return 0.0
        return self.host_seconds / self.lower_bound_seconds

    @property
    def migrations_per_vm_hour(self) -> float:
        return self.migrations / (self.vm_seconds / 3600) if self.vm_seconds > 0 else 0.0

    @property
    def migrated_fraction(self) -> float:
        return self.vms_migrated / self.placed if self.placed else 0.0

    @property
    def peak_ratio(self) -> float:
        return self.peak_hosts / self.peak_lower_bound if self.peak_lower_bound > 0 else 0.0


# --------------------------------------------------------------------------- trace readers


def read_azure(lines: Iterable[str]) -> list[TraceVm]:
    """Azure 2017 rows: each VM lives for the middle of its duration bin (see module doc)."""
    vms = []
    for row in csv.DictReader(lines):
        lo_s, hi_s = float(row["dur_lo_s"]), float(row["dur_hi_s"])
        lifetime_s = (lo_s + hi_s) / 2 if hi_s > 0 else SHORTEST_BIN_S
        arrival_s = float(row["arrival_s"])
        censored = row["censored"] == "1"
        vms.append(
            TraceVm(
                vm_id=row["vm_id"],
                arrival_s=arrival_s,
                departure_s=None if censored else arrival_s + lifetime_s,
                batch=row["batch_id"],
                resources=Resources(int(row["vcpus"]) * 1000, round(float(row["mem_gb"]) * 1024)),
            )
        )
    return vms


def read_alibaba_pods(lines: Iterable[str]) -> list[TraceVm]:
    """Alibaba 2023 pods as VMs: ``cpu_milli`` and ``memory_mib``, created and deleted."""
    vms = []
    for row in csv.DictReader(lines):
        deleted = row["deletion_time"]
        vms.append(
            TraceVm(
                vm_id=row["name"],
                arrival_s=float(row["creation_time"]),
                departure_s=float(deleted) if deleted else None,
                batch=row["name"],
                resources=Resources(int(row["cpu_milli"]), int(row["memory_mib"])),
            )
        )
    return vms


def read_alibaba_hosts(lines: Iterable[str]) -> list[HostView]:
    return [
        HostView(
            host_id=HostId(row["sn"]),
            region="trace",
            fault_domain="fd-0",
            capacity=Resources(int(row["cpu_milli"]), int(row["memory_mib"])),
        )
        for row in csv.DictReader(lines)
    ]


def equal_hosts(count: int, capacity: Resources) -> list[HostView]:
    width = len(str(max(count - 1, 0)))
    return [
        HostView(
            host_id=HostId(f"host-{n:0{width}d}"),
            region="trace",
            fault_domain="fd-0",
            capacity=capacity,
        )
        for n in range(count)
    ]


def peak_lower_bound(vms: Iterable[TraceVm], capacity: Resources) -> float:
    """The largest ``max(Σcpu / host_cpu, Σmem / host_mem)`` of the VMs running at once."""
    events: list[tuple[float, int, Resources]] = []
    for vm in vms:
        events.append((vm.arrival_s, 1, vm.resources))
        if vm.departure_s is not None:
            events.append((vm.departure_s, 0, vm.resources))
    events.sort(key=lambda e: (e[0], e[1]))  # departures first at equal times
    cpu = mem = 0
    peak = 0.0
    for _, arriving, res in events:
        sign = 1 if arriving else -1
        cpu += sign * res.cpu_milli
        mem += sign * res.mem_mib
        peak = max(peak, max(cpu / capacity.cpu_milli, mem / capacity.mem_mib))
    return peak


def hosts_needed(vms: list[TraceVm], capacity: Resources) -> int:
    """A fleet size that never runs out: the peak lower bound plus a quarter, plus 8."""
    return math.ceil(peak_lower_bound(vms, capacity) * 1.25) + 8


def stranded(hosts: Iterable[HostView], probe: Resources) -> Resources:
    """Free capacity that ``probe`` could not use: CPU free on hosts without ``probe``'s memory
    free, and memory free on hosts without its CPU free."""
    cpu = mem = 0
    for view in hosts:
        free = view.free
        if free.mem_mib < probe.mem_mib:
            cpu += max(free.cpu_milli, 0)
        if free.cpu_milli < probe.cpu_milli:
            mem += max(free.mem_mib, 0)
    return Resources(cpu, mem)


# --------------------------------------------------------------------------- the replay


def simulate(
    vms: Iterable[TraceVm],
    hosts: Iterable[HostView],
    policy: SimPolicy,
    *,
    bound_capacity: Resources | None = None,
    sample_every_s: float = 3600.0,
) -> tuple[SimResult, list[HostView]]:
    """Replay ``vms`` on ``hosts``; the result, and the hosts as they are at the last arrival.

    ``bound_capacity`` is the host size the lower bound divides by (equal hosts); without it
    the lower bound and the ratios stay zero.
    """
    arrivals = sorted(vms, key=lambda vm: vm.arrival_s)
    replay = _Replay(HostIndex(hosts), policy, bound_capacity, sample_every_s)
    if arrivals:
        replay.start(arrivals[0].arrival_s)
    for vm in arrivals:
        replay.advance_to(vm.arrival_s)
        replay.arrive(vm)
    return replay.result, list(replay.index.views)


@dataclass(slots=True)
class _Flight:
    """A migration under way: the VM holds capacity on both hosts until it lands."""

    vm: TraceVm
    source: HostId
    target: HostId
    started_s: float


class _VmsByHost(Mapping[HostId, Collection[RebalanceVm]]):
    """The planner's view of ``_Replay.on_host`` without copying it."""

    def __init__(self, on_host: dict[HostId, dict[str, RebalanceVm]]) -> None:
        self._on_host = on_host

    def __getitem__(self, host: HostId) -> Collection[RebalanceVm]:
        return self._on_host[host].values()

    def __iter__(self) -> Iterator[HostId]:
        return iter(self._on_host)

    def __len__(self) -> int:
        return len(self._on_host)


class _Replay:
    def __init__(
        self,
        index: HostIndex,
        policy: SimPolicy,
        bound_capacity: Resources | None,
        sample_every_s: float,
    ) -> None:
        self.index = index
        self.policy = policy
        self.bound_capacity = bound_capacity
        self.sample_every_s = sample_every_s
        self.result = SimResult()
        self._placement = PlacementPolicy(policy.scorer)
        self._where: dict[str, HostId] = {}
        self._vms: dict[str, TraceVm] = {}
        """The VMs running, by id."""
        self.on_host: dict[HostId, dict[str, RebalanceVm]] = {}
        self._holders: dict[HostId, int] = {}
        """VMs holding capacity on each host (a migrating VM on both of its hosts)."""
        self._batch_hosts: dict[str, Counter[HostId]] = {}
        self._departures: list[tuple[float, int, TraceVm]] = []
        self._landings: list[tuple[float, int, str]] = []
        self._flights: dict[str, _Flight] = {}
        self._in_flight: dict[HostId, int] = {}
        self._budget = MigrationBudget()
        self._hour_starts: deque[float] = deque()  # migrations started in the last hour
        self._migrated: set[str] = set()
        self._seq = 0
        self._in_use = 0
        self._running = ZERO
        self._running_vms = 0
        self._now_s = 0.0
        self._next_sample_s = 0.0
        self._next_tick_s = math.inf

    def start(self, t_s: float) -> None:
        self._now_s = self._next_sample_s = t_s
        if self.policy.rebalance.enabled:
            self._next_tick_s = t_s + self.policy.rebalance.interval_s

    def lower_bound(self) -> float:
        cap = self.bound_capacity
        if cap is None:
            return 0.0
        running = self._running
        return max(running.cpu_milli / cap.cpu_milli, running.mem_mib / cap.mem_mib)

    def advance_to(self, t_s: float) -> None:
        """Carry out departures, migrations and rebalancer rounds due by ``t_s``, integrating
        as we go. At equal times landings go first, then departures, then arrivals, and a round
        last: the Azure trace's arrivals fall on 300 s marks, and a round ahead of a burst
        of them would find the burst's capacity held by migrations it just started."""
        while True:
            landing_s = self._landings[0][0] if self._landings else math.inf
            departure_s = self._departures[0][0] if self._departures else math.inf
            tick_s = self._next_tick_s if self._next_tick_s < t_s else math.inf
            due_s = min(landing_s, departure_s, tick_s)
            if due_s > t_s:
                break
            self._integrate(due_s)
            if landing_s == due_s:
                self._land(heapq.heappop(self._landings)[2])
            elif departure_s == due_s:
                self._depart(heapq.heappop(self._departures)[2])
            else:
                self._rebalance()
                self._next_tick_s += self.policy.rebalance.interval_s
        self._integrate(t_s)

    def arrive(self, vm: TraceVm) -> None:
        result = self.result
        result.vms += 1
        host = self._choose(vm)
        if host is None:
            result.rejected += 1
            return
        result.placed += 1
        self._put(vm, host, RebalanceVm(VmName(vm.vm_id), vm.resources))
        self._vms[vm.vm_id] = vm
        self._running = self._running + vm.resources
        self._running_vms += 1
        result.peak_hosts = max(result.peak_hosts, self._in_use)
        result.peak_lower_bound = max(result.peak_lower_bound, self.lower_bound())
        if vm.departure_s is not None:
            heapq.heappush(self._departures, (vm.departure_s, self._next_seq(), vm))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _integrate(self, t_s: float) -> None:
        dt_s = t_s - self._now_s
        if dt_s <= 0:
            return
        bound = self.lower_bound()
        result = self.result
        result.host_seconds += self._in_use * dt_s
        result.lower_bound_seconds += bound * dt_s
        result.vm_seconds += self._running_vms * dt_s
        while self._next_sample_s <= t_s:
            result.series.append((self._next_sample_s, self._in_use, round(bound, 2)))
            self._next_sample_s += self.sample_every_s
        self._now_s = t_s

    def _choose(self, vm: TraceVm) -> HostId | None:
        req = PlacementRequest(VmName(vm.vm_id), vm.resources)
        batch_hosts = self._batch_hosts.get(vm.batch) if self.policy.group_batches else None
        if batch_hosts:
            views = [self.index.view(host) for host in batch_hosts]
            result = place(req, views, self._placement)
            if isinstance(result, Placed):
                return result.host_id
        result = self.index.place(req, self._placement)
        return result.host_id if isinstance(result, Placed) else None

    def _depart(self, vm: TraceVm) -> None:
        if vm.vm_id not in self._where:
            return
        flight = self._flights.pop(vm.vm_id, None)
        if flight is not None:  # it leaves mid-migration: the target's reservation goes too
            self._unhold(flight.target, vm.resources)
            self._end_flight(flight)
        self._take(vm)
        del self._vms[vm.vm_id]
        self._running = self._running - vm.resources
        self._running_vms -= 1

    # ----------------------------------------------------------------------- holding capacity

    def _hold(self, host: HostId, resources: Resources) -> None:
        self.index.reserve(host, resources)
        held = self._holders[host] = self._holders.get(host, 0) + 1
        if held == 1:
            self._in_use += 1

    def _unhold(self, host: HostId, resources: Resources) -> None:
        self.index.release(host, resources)
        held = self._holders[host] = self._holders[host] - 1
        if held == 0:
            self._in_use -= 1

    def _put(self, vm: TraceVm, host: HostId, entry: RebalanceVm, *, held: bool = False) -> None:
        """``vm`` runs on ``host`` (``held``: its capacity there is already reserved)."""
        if not held:
            self._hold(host, vm.resources)
        self.on_host.setdefault(host, {})[vm.vm_id] = entry
        self._where[vm.vm_id] = host
        self._batch_hosts.setdefault(vm.batch, Counter())[host] += 1

    def _take(self, vm: TraceVm) -> HostId:
        host = self._where.pop(vm.vm_id)
        vms = self.on_host[host]
        del vms[vm.vm_id]
        if not vms:
            del self.on_host[host]
        self._unhold(host, vm.resources)
        hosts = self._batch_hosts[vm.batch]
        hosts[host] -= 1
        if hosts[host] <= 0:
            del hosts[host]
            if not hosts:
                del self._batch_hosts[vm.batch]
        return host

    # ---------------------------------------------------------------------------- migrations

    def _rebalance(self) -> None:
        cluster = Cluster(self.index.views, _VmsByHost(self.on_host), in_flight=self._in_flight)
        plan = plan_moves(
            cluster, self._placement, self.policy.rebalance, self._budget, self._now_s
        )
        self._budget = plan.budget
        for move in plan.moves:
            self._take_off(move)
        self.result.peak_hosts = max(self.result.peak_hosts, self._in_use)

    def _take_off(self, move: Move) -> None:
        """Start a migration: the target holds the VM's capacity from now on."""
        entry = self.on_host[move.source][move.vm]
        self.on_host[move.source][move.vm] = replace(entry, movable=False)
        vm_id = str(move.vm)
        self._hold(move.target, entry.resources)
        self._flights[vm_id] = _Flight(self._vms[vm_id], move.source, move.target, self._now_s)
        for host in (move.source, move.target):
            self._in_flight[host] = self._in_flight.get(host, 0) + 1
        done_s = self._now_s + migration_s(entry.resources)
        heapq.heappush(self._landings, (done_s, self._next_seq(), vm_id))
        self.result.migrations += 1
        self._count_hour()
        if vm_id not in self._migrated:
            self._migrated.add(vm_id)
            self.result.vms_migrated += 1

    def _count_hour(self) -> None:
        starts = self._hour_starts
        starts.append(self._now_s)
        while self._now_s - starts[0] >= HOUR_S:
            starts.popleft()
        self.result.busiest_hour_migrations = max(self.result.busiest_hour_migrations, len(starts))

    def _land(self, vm_id: str) -> None:
        """A migration completes: the VM runs on the target and leaves the source."""
        flight = self._flights.pop(vm_id, None)
        if flight is None:  # it left mid-migration
            return
        self._end_flight(flight)
        self._take(flight.vm)
        entry = RebalanceVm(VmName(vm_id), flight.vm.resources, last_migrated_s=flight.started_s)
        self._put(flight.vm, flight.target, entry, held=True)

    def _end_flight(self, flight: _Flight) -> None:
        for host in (flight.source, flight.target):
            left = self._in_flight[host] = self._in_flight[host] - 1
            if left == 0:
                del self._in_flight[host]
