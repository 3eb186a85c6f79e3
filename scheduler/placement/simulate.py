"""Replay a VM trace through the scheduler's placement and count the hosts it needs. Pure.

Arrivals are placed with the same ``HostIndex`` the scheduler's ``place_batch`` uses, one at a
time in arrival order; departures give the capacity back. Time is the trace's own: the replay
jumps from event to event (as fast as the CPU allows), and integrates over trace time the hosts
in use (hosts holding at least one VM) and the lower bound ``max(Σcpu / host_cpu, Σmem /
host_mem)`` of the VMs running at that moment.

Two optional refinements on top of the plain scorer:

* ``group_batches``: a VM whose batch (one tenant's simultaneous requests) already runs on some
  hosts goes to one of those if it fits there, chosen by the same ``place`` among them.
* ``consolidate_every_s``: every so often, hosts less than ``consolidate_below`` full are
  emptied by migrating all their VMs onto other hosts already in use, if (and only if) every one
  of them fits there; a host that cannot be emptied completely is left alone. Each move counts
  as one migration.

Readers for the Azure 2017 and Alibaba 2023 traces (see the workloads README for their
sources and licences) take lines of text, so this module opens no files.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from common.ids import HostId, VmName
from common.resources import ZERO, Resources
from scheduler.placement.index import HostIndex
from scheduler.placement.pipeline import Placed, PlacementPolicy, place
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


@dataclass(frozen=True, slots=True)
class SimPolicy:
    scorer: ScorerName = "binpack"
    group_batches: bool = False
    consolidate_every_s: float | None = None
    consolidate_below: float = 0.5
    """Fraction of a host's capacity (the larger of CPU and memory) under which it is emptied."""


@dataclass(slots=True)
class SimResult:
    vms: int = 0
    placed: int = 0
    rejected: int = 0
    migrations: int = 0
    peak_hosts: int = 0
    peak_lower_bound: float = 0.0
    host_seconds: float = 0.0
    """∫ hosts in use dt, over the arrivals' span."""
    lower_bound_seconds: float = 0.0
    """∫ lower bound dt, over the same span."""
    series: list[tuple[float, int, float]] = field(default_factory=list)
    """``(t_s, hosts in use, lower bound)`` sampled every ``sample_every_s``."""

    @property
    def time_averaged_ratio(self) -> float:
        if self.lower_bound_seconds <= 0:
            return 0.0
        return self.host_seconds / self.lower_bound_seconds

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
        self._packing = PlacementPolicy("binpack")
        self._where: dict[str, HostId] = {}
        self._on_host: dict[HostId, dict[str, TraceVm]] = {}
        self._batch_hosts: dict[str, Counter[HostId]] = {}
        self._departures: list[tuple[float, int, TraceVm]] = []
        self._seq = 0
        self._in_use = 0
        self._running = ZERO
        self._now_s = 0.0
        self._next_sample_s = 0.0
        self._next_tick_s = math.inf

    def start(self, t_s: float) -> None:
        self._now_s = self._next_sample_s = t_s
        if self.policy.consolidate_every_s is not None:
            self._next_tick_s = t_s + self.policy.consolidate_every_s

    def lower_bound(self) -> float:
        cap = self.bound_capacity
        if cap is None:
            return 0.0
        running = self._running
        return max(running.cpu_milli / cap.cpu_milli, running.mem_mib / cap.mem_mib)

    def advance_to(self, t_s: float) -> None:
        """Carry out departures and consolidation rounds due by ``t_s``, integrating as we go."""
        while True:
            next_departure_s = self._departures[0][0] if self._departures else math.inf
            due_s = min(next_departure_s, self._next_tick_s)
            if due_s > t_s:
                break
            self._integrate(due_s)
            if next_departure_s <= self._next_tick_s:
                self._depart(heapq.heappop(self._departures)[2])
            else:
                self._consolidate()
                assert self.policy.consolidate_every_s is not None
                self._next_tick_s += self.policy.consolidate_every_s
        self._integrate(t_s)

    def arrive(self, vm: TraceVm) -> None:
        result = self.result
        result.vms += 1
        host = self._choose(vm)
        if host is None:
            result.rejected += 1
            return
        result.placed += 1
        self._put(vm, host)
        self._running = self._running + vm.resources
        result.peak_hosts = max(result.peak_hosts, self._in_use)
        result.peak_lower_bound = max(result.peak_lower_bound, self.lower_bound())
        if vm.departure_s is not None:
            self._seq += 1
            heapq.heappush(self._departures, (vm.departure_s, self._seq, vm))

    def _integrate(self, t_s: float) -> None:
        dt_s = t_s - self._now_s
        if dt_s <= 0:
            return
        bound = self.lower_bound()
        self.result.host_seconds += self._in_use * dt_s
        self.result.lower_bound_seconds += bound * dt_s
        while self._next_sample_s <= t_s:
            self.result.series.append((self._next_sample_s, self._in_use, round(bound, 2)))
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
        if vm.vm_id in self._where:
            self._take(vm)
            self._running = self._running - vm.resources

    def _put(self, vm: TraceVm, host: HostId) -> None:
        vms = self._on_host.setdefault(host, {})
        if not vms:
            self._in_use += 1
        vms[vm.vm_id] = vm
        self._where[vm.vm_id] = host
        self.index.reserve(host, vm.resources)
        self._batch_hosts.setdefault(vm.batch, Counter())[host] += 1

    def _take(self, vm: TraceVm) -> HostId:
        host = self._where.pop(vm.vm_id)
        vms = self._on_host[host]
        del vms[vm.vm_id]
        if not vms:
            self._in_use -= 1
        self.index.release(host, vm.resources)
        hosts = self._batch_hosts[vm.batch]
        hosts[host] -= 1
        if hosts[host] <= 0:
            del hosts[host]
            if not hosts:
                del self._batch_hosts[vm.batch]
        return host

    # ----------------------------------------------------------------------- consolidation

    def _fill(self, host: HostId) -> float:
        view = self.index.view(host)
        cap, used = view.schedulable, view.allocated
        return max(used.cpu_milli / max(cap.cpu_milli, 1), used.mem_mib / max(cap.mem_mib, 1))

    def _consolidate(self) -> None:
        """Empty the emptiest hosts in use onto the others, where every VM of one fits."""
        below = self.policy.consolidate_below
        ranked = sorted((self._fill(host), host) for host, vms in self._on_host.items() if vms)
        for fill, host in ranked:
            if fill >= below:
                break
            if self._on_host[host] and self._fill(host) < below:
                self._try_to_empty(host)

    def _try_to_empty(self, host: HostId) -> bool:
        """Move every VM off ``host`` onto hosts in use, or move none."""
        vms = sorted(
            self._on_host[host].values(),
            key=lambda vm: (-vm.resources.mem_mib, -vm.resources.cpu_milli, vm.vm_id),
        )
        moved: list[TraceVm] = []
        for vm in vms:
            req = PlacementRequest(VmName(vm.vm_id), vm.resources, avoid_hosts=frozenset({host}))
            result = self.index.place(req, self._packing)
            if not isinstance(result, Placed) or not self._on_host.get(result.host_id):
                for done in reversed(moved):  # it does not pay: put them back
                    self._take(done)
                    self._put(done, host)
                return False
            self._take(vm)
            self._put(vm, result.host_id)
            moved.append(vm)
        self.result.migrations += len(moved)
        return True
