"""An index over hosts that answers ``place`` without scanning every host per request. Pure.

``pipeline.place`` is the specification: it runs every filter on every host and scores every
host that passes. ``HostIndex.place`` returns exactly what ``place`` would return for the same
hosts, only faster, by grouping hosts that score alike:

* Hosts that are up and not cordoned are grouped into *shapes*: same region, fault domain and
  schedulable capacity (``Sc`` millicores, ``Sm`` MiB). Within a shape both scorers are a
  function of one integer, ``K = fc * Sm + fm * Sc`` for a host with ``fc``/``fm`` free (a
  dimension with zero capacity contributes nothing, as in the scorers): binpack prefers the
  smallest ``K`` and spread the largest.
* Each shape keeps its hosts in *groups* of one free vector, ``(K, fc, fm)``, the groups sorted
  and each group's hosts in host id order (``rank``). A host fits only if
  ``K >= c * Sm + m * Sc`` for a request of ``c``/``m``, so binpack starts its scan there;
  spread scans down from the largest ``K``. Hosts fill up alike, so a shape of thousands of
  hosts has a few dozen groups: the scan steps over the full ones a group at a time.
* Two hosts of one shape with different ``K`` have scores at least ``1 / (2 * Sc * Sm)`` apart,
  far more than the rounding error of the float score, so the integer order is the float order.
  Hosts with the same ``(K, fc, fm)`` have the same free vector, hence bit-identical scores,
  and the smallest rank (host id) wins, as in ``place``. Hosts with the same ``K`` but different
  free vectors may differ in the last bit of the score, so the index keeps the first fitting host
  of each such group and lets the real scorer decide between them.
* Hosts that break these assumptions (negative allocation, or a capacity so large that the gap
  above could drown in rounding) are kept aside and checked one by one with the real filters.

A request that fits nowhere, or one with negative resources, is answered by ``place`` itself,
so the rejection counts are the specification's own.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass, field

import msgspec

from common.ids import HostId
from common.resources import Resources
from scheduler.placement.filters import FILTERS
from scheduler.placement.pipeline import (
    SCORERS,
    Placed,
    PlacementPolicy,
    Unplaceable,
    place,
)
from scheduler.state.model import HostView, PlacementRequest

_EXACT_LIMIT = 2**46
"""Largest ``Sc * Sm`` for which integer order is float order (the gap stays above 2e-15)."""

_NONE: frozenset[int] = frozenset()

_Group = tuple[int, int, int]
"""``(K, free cpu, free memory)``: hosts of one shape with this free vector score alike."""


@dataclass(slots=True)
class _Shape:
    """Hosts of one region, fault domain and schedulable capacity, grouped by free vector."""

    region: str
    fault_domain: str
    cpu_weight: int
    """Multiplies free CPU in ``K``: ``Sm`` (1 if there is no memory), 0 without CPU."""
    mem_weight: int
    groups: list[_Group] = field(default_factory=list)
    """Sorted; each group has at least one host."""
    ranks: dict[_Group, list[int]] = field(default_factory=dict)
    """The hosts (ranks) of each group, ascending."""

    def key(self, cpu_milli: int, mem_mib: int) -> int:
        return cpu_milli * self.cpu_weight + mem_mib * self.mem_weight

    def add(self, group: _Group, rank: int, *, sort: bool) -> None:
        ranks = self.ranks.get(group)
        if ranks is None:
            self.ranks[group] = [rank]
            if sort:
                insort(self.groups, group)
            else:
                self.groups.append(group)
        elif sort:
            insort(ranks, rank)
        else:
            ranks.append(rank)

    def remove(self, group: _Group, rank: int) -> None:
        ranks = self.ranks[group]
        if len(ranks) > 1:
            del ranks[bisect_left(ranks, rank)]
            return
        del self.ranks[group]
        del self.groups[bisect_left(self.groups, group)]


def _shape_key(view: HostView) -> tuple[str, str, int, int] | None:
    """The shape a host belongs to, or None if it must be checked one by one."""
    schedulable = view.schedulable
    if view.allocated.cpu_milli < 0 or view.allocated.mem_mib < 0:
        return None
    if max(schedulable.cpu_milli, 1) * max(schedulable.mem_mib, 1) >= _EXACT_LIMIT:
        return None
    return view.region, view.fault_domain, schedulable.cpu_milli, schedulable.mem_mib


class HostIndex:
    """Hosts for placement, kept sorted so that ``place`` need not look at every one.

    Build it from views, ask ``place``, and tell it about every placement with ``reserve``
    (and every departure with ``release``); ``views`` are the current hosts in id order.
    """

    def __init__(self, hosts: Iterable[HostView]) -> None:
        self.views: list[HostView] = sorted(hosts, key=lambda view: view.host_id)
        self._rank = {view.host_id: rank for rank, view in enumerate(self.views)}
        self._free_cpu = [view.free.cpu_milli for view in self.views]
        self._free_mem = [view.free.mem_mib for view in self.views]
        self._shapes: dict[tuple[str, str, int, int], _Shape] = {}
        self._shape_of: list[_Shape | None] = [None] * len(self.views)
        self._odd: set[int] = set()
        """Up, uncordoned hosts outside every shape: checked one by one."""
        for rank in range(len(self.views)):
            self._add(rank, sort=False)
        for shape in self._shapes.values():
            shape.groups.sort()  # (each group's ranks came in ascending order)

    def place(
        self,
        req: PlacementRequest,
        policy: PlacementPolicy,
        set_fault_domains: Mapping[str, int] | None = None,
    ) -> Placed | Unplaceable:
        """What ``pipeline.place(req, self.views, policy, set_fault_domains)`` returns."""
        if req.resources.cpu_milli < 0 or req.resources.mem_mib < 0:
            return place(req, self.views, policy, set_fault_domains)
        if req.pinned_host is not None:
            ranks = self._pinned_candidates(req)
        else:
            ranks = self._candidates(req, policy)
        counts = set_fault_domains or {}
        fewest = None
        if req.availability_set is not None and ranks:
            fewest = min(counts.get(self.views[r].fault_domain, 0) for r in ranks)
            ranks = [r for r in ranks if counts.get(self.views[r].fault_domain, 0) == fewest]
        if req.preferred_hosts and ranks:
            ranks = self._preferred(req, fewest, counts) or ranks
        if not ranks:
            return place(req, self.views, policy, set_fault_domains)
        scorer = SCORERS[policy.scorer]
        views = self.views
        neg_score, host_id = min((-scorer(req, views[r]), views[r].host_id) for r in ranks)
        return Placed(host_id=host_id, score=-neg_score)

    def _preferred(
        self, req: PlacementRequest, fewest: int | None, counts: Mapping[str, int]
    ) -> list[int]:
        """The preferred hosts that pass every filter (and, for a set member, are in the fault
        domains holding the fewest members)."""
        found = []
        for host_id in req.preferred_hosts:
            rank = self._rank.get(host_id)
            if rank is None or rank in found or not _passes(req, self.views[rank]):
                continue
            if fewest is None or counts.get(self.views[rank].fault_domain, 0) == fewest:
                found.append(rank)
        return found

    def view(self, host_id: HostId) -> HostView:
        """The host as it is now, with every reservation so far."""
        return self.views[self._rank[host_id]]

    def __contains__(self, host_id: HostId) -> bool:
        return host_id in self._rank

    def update(self, view: HostView) -> None:
        """Replace a known host's view (its allocation, state or capacity changed)."""
        rank = self._rank[view.host_id]
        if self.views[rank] == view:
            return  # e.g. a host refreshed from records that now hold what was reserved on it
        self._remove(rank)
        self.views[rank] = view
        self._add(rank, sort=True)

    def reserve(self, host_id: HostId, resources: Resources, disk_mib: int = 0) -> None:
        """Record that ``resources`` now run on ``host_id`` (and ``disk_mib`` is used there)."""
        rank = self._rank[host_id]
        view = self.views[rank].with_reserved(resources, disk_mib)
        shape = self._shape_of[rank]
        cpu, mem = resources.cpu_milli, resources.mem_mib
        if shape is None or cpu < 0 or mem < 0:
            self._remove(rank)
            self.views[rank] = view
            self._add(rank, sort=True)
            return
        # It stays in its shape (same capacity, allocation still >= 0): only its group changes.
        free_cpu, free_mem = self._free_cpu[rank], self._free_mem[rank]
        shape.remove((shape.key(free_cpu, free_mem), free_cpu, free_mem), rank)
        free_cpu, free_mem = free_cpu - cpu, free_mem - mem
        shape.add((shape.key(free_cpu, free_mem), free_cpu, free_mem), rank, sort=True)
        self._free_cpu[rank], self._free_mem[rank] = free_cpu, free_mem
        self.views[rank] = view

    def release(self, host_id: HostId, resources: Resources) -> None:
        """Record that ``resources`` left ``host_id``."""
        rank = self._rank[host_id]
        self._remove(rank)
        view = self.views[rank]
        self.views[rank] = msgspec.structs.replace(view, allocated=view.allocated - resources)
        self._add(rank, sort=True)

    def _add(self, rank: int, *, sort: bool) -> None:
        view = self.views[rank]
        free = view.free
        self._free_cpu[rank], self._free_mem[rank] = free.cpu_milli, free.mem_mib
        if not view.up or view.cordoned:
            return  # never a candidate
        key = _shape_key(view)
        if key is None:
            self._odd.add(rank)
            return
        shape = self._shapes.get(key)
        if shape is None:
            region, domain, cpu, mem = key
            cpu_weight = 0 if cpu <= 0 else max(mem, 1)
            mem_weight = 0 if mem <= 0 else max(cpu, 1)
            shape = self._shapes[key] = _Shape(region, domain, cpu_weight, mem_weight)
        self._shape_of[rank] = shape
        group = (shape.key(free.cpu_milli, free.mem_mib), free.cpu_milli, free.mem_mib)
        shape.add(group, rank, sort=sort)

    def _remove(self, rank: int) -> None:
        self._odd.discard(rank)
        shape = self._shape_of[rank]
        if shape is None:
            return
        self._shape_of[rank] = None
        cpu, mem = self._free_cpu[rank], self._free_mem[rank]
        shape.remove((shape.key(cpu, mem), cpu, mem), rank)

    def _pinned_candidates(self, req: PlacementRequest) -> list[int]:
        rank = self._rank.get(req.pinned_host) if req.pinned_host is not None else None
        if rank is None or not _passes(req, self.views[rank]):
            return []
        return [rank]

    def _candidates(self, req: PlacementRequest, policy: PlacementPolicy) -> list[int]:
        """Hosts among which the best lies: per shape, the best few; each odd host that fits."""
        avoid = {self._rank[h] for h in req.avoid_hosts if h in self._rank} or _NONE
        cpu, mem, disk = req.resources.cpu_milli, req.resources.mem_mib, req.disk_mib
        spread = policy.scorer == "spread"
        ranks = [r for r in sorted(self._odd) if _passes(req, self.views[r])]
        for shape in self._shapes.values():
            if req.region is not None and shape.region != req.region:
                continue
            if spread:
                ranks.extend(self._best_spread(shape, cpu, mem, disk, avoid))
            else:
                ranks.extend(self._best_binpack(shape, cpu, mem, disk, avoid))
        return ranks

    def _best_binpack(
        self, shape: _Shape, cpu: int, mem: int, disk: int, avoid: AbstractSet[int]
    ) -> list[int]:
        """The first fitting host of each group at the smallest fitting ``K``."""
        groups = shape.groups
        end = len(groups)
        i = bisect_left(groups, (shape.key(cpu, mem),))
        best_k: int | None = None
        found: list[int] = []
        while i < end:
            group = groups[i]
            k, free_cpu, free_mem = group
            if best_k is not None and k != best_k:
                break
            i += 1
            if free_cpu < cpu or free_mem < mem:
                continue  # the whole group is too small
            rank = self._first_allowed(shape.ranks[group], disk, avoid)
            if rank is not None:
                best_k = k
                found.append(rank)
        return found

    def _best_spread(
        self, shape: _Shape, cpu: int, mem: int, disk: int, avoid: AbstractSet[int]
    ) -> list[int]:
        """The first fitting host of each group at the largest ``K``."""
        groups = shape.groups
        lowest = shape.key(cpu, mem)
        best_k: int | None = None
        found: list[int] = []
        i = len(groups) - 1
        while i >= 0:
            group = groups[i]
            k, free_cpu, free_mem = group
            if k < lowest or (best_k is not None and k != best_k):
                break
            i -= 1
            if free_cpu < cpu or free_mem < mem:
                continue
            rank = self._first_allowed(shape.ranks[group], disk, avoid)
            if rank is not None:
                best_k = k
                found.append(rank)
        return found

    def _first_allowed(self, ranks: list[int], disk: int, avoid: AbstractSet[int]) -> int | None:
        """The first of a group's hosts not avoided and with room for ``disk``."""
        if not avoid and disk <= 0:
            return ranks[0]
        views = self.views
        for rank in ranks:
            if rank not in avoid and views[rank].has_disk_room(disk):
                return rank
        return None


def _passes(req: PlacementRequest, view: HostView) -> bool:
    return all(check(req, view) is None for check in FILTERS)


def place_batch(
    reqs: Sequence[PlacementRequest],
    hosts: Mapping[HostId, HostView],
    policy: PlacementPolicy,
    set_members: Mapping[str, Mapping[str, int]] | None = None,
) -> list[Placed | Unplaceable]:
    """Place ``reqs`` in order, each seeing the capacity the earlier ones reserved.

    Each request gets what ``place`` would answer for the hosts as they are at that point;
    ``HostIndex`` finds it without scanning every host (see above).

    ``set_members`` maps an availability set to its member count per fault domain. Inputs are
    never mutated: reservations go to copies (``HostView.with_reserved``). Results are in the
    order of ``reqs``.
    """
    if not reqs:
        return []
    return place_on_index(reqs, HostIndex(hosts.values()), policy, set_members)


def place_on_index(
    reqs: Sequence[PlacementRequest],
    index: HostIndex,
    policy: PlacementPolicy,
    set_members: Mapping[str, Mapping[str, int]] | None = None,
) -> list[Placed | Unplaceable]:
    """``place_batch`` on an index the caller keeps: each placement is reserved in it."""
    members = {name: dict(counts) for name, counts in (set_members or {}).items()}
    results: list[Placed | Unplaceable] = []
    for req in reqs:
        counts = None
        if req.availability_set is not None:
            counts = members.setdefault(req.availability_set, {})
        result = index.place(req, policy, counts)
        if isinstance(result, Placed):
            if counts is not None:
                domain = index.view(result.host_id).fault_domain
                counts[domain] = counts.get(domain, 0) + 1
            index.reserve(result.host_id, req.resources, req.disk_mib)
        results.append(result)
    return results
