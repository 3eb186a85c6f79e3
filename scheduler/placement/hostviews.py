"""What placement sees of the hosts: a view per host built from the records, and the placement
index kept across core steps. Pure; owned by the core (one writer)."""

from __future__ import annotations

from collections import defaultdict

from common.config import SchedulerConfig
from common.ids import HostId
from common.resources import ZERO
from scheduler.placement.copies import CopyIndex
from scheduler.placement.index import HostIndex
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostView


class HostViews:
    def __init__(self, config: SchedulerConfig, state: ClusterState) -> None:
        self.config = config
        self.state = state
        self._index: HostIndex | None = None
        self._copies: CopyIndex | None = None
        self._empty: list[HostView] | None = None
        self._replica_domains: dict[str | None, frozenset[str]] = {}

    def index(self) -> HostIndex:
        """The index, brought up to date: only the hosts whose view changed
        (``ClusterState.stale_views``) are looked at again; at 10,000 hosts a rebuild per step
        cost 25-50 ms."""
        return self._refresh()

    def copies(self) -> CopyIndex:
        """The index of homes for disk copies, brought up to date as ``index`` is (built when
        first asked for: a cluster without replicated disks never builds it)."""
        index = self._refresh()
        if self._copies is None:
            self._copies = CopyIndex(index.views)
        return self._copies

    def _refresh(self) -> HostIndex:
        state, index = self.state, self._index
        stale = [host for host in state.stale_views if host in state.hosts]
        state.stale_views.clear()
        if index is None or any(host not in index for host in stale):  # a host joined
            index = self._index = HostIndex(self.view(h) for h in state.hosts)
            self._copies = None
        else:
            for host in stale:
                view = self.view(host)
                index.update(view)
                if self._copies is not None:
                    self._copies.update(view)
        return index

    def replica_domains(self, region: str | None) -> frozenset[str]:
        """The fault domains of the up, schedulable hosts serving replicas (in ``region``, if
        given): where new copies can go (a cordoned host takes none)."""
        domains = self._replica_domains.get(region)
        if domains is None:
            domains = self._replica_domains[region] = frozenset(
                h.fault_domain
                for h in self.state.hosts.values()
                if h.up
                and not h.cordoned
                and h.replica_port
                and (region is None or h.region == region)
            )
        return domains

    def check(self) -> None:
        """Raise AssertionError if the kept indexes disagree with fresh ones (used by tests)."""
        kept = {view.host_id: view for view in self.index().views}
        fresh = self.all()
        assert kept == fresh, "placement index drift"
        if self._copies is not None:
            copies = {view.host_id: view for view in self._copies.views()}
            assert copies == fresh, "copy index drift"
            assert self._copies.same_as(CopyIndex(fresh.values())), "copy index order drift"

    def all(self) -> dict[HostId, HostView]:
        return {host: self.view(host) for host in self.state.hosts}

    def view(self, host: HostId) -> HostView:
        record = self.state.hosts[host]
        runtime = self.state.runtimes.get(host)
        allocated = self.state.allocated.get(host, ZERO)
        if runtime is not None:
            allocated = allocated + runtime.orphaned
        return HostView(
            host_id=host,
            region=record.region,
            fault_domain=record.fault_domain,
            capacity=record.capacity,
            allocated=allocated,
            cpu_overcommit=record.cpu_overcommit or self.config.cpu_overcommit,
            up=record.up,
            cordoned=record.cordoned,
            disk_capacity_mib=record.disk_capacity_mib,
            disk_used_mib=self.state.disks.used_mib.get(host, 0),
            serves_replicas=record.replica_port > 0
            and runtime is not None
            and runtime.replicas_known,
        )

    def empty(self) -> list[HostView]:
        """Every host as if it ran nothing (could a request ever fit?)."""
        if self._empty is None:
            self._empty = [
                HostView(
                    host_id=h.host_id,
                    region=h.region,
                    fault_domain=h.fault_domain,
                    capacity=h.capacity,
                    cpu_overcommit=h.cpu_overcommit or self.config.cpu_overcommit,
                )
                for h in self.state.hosts.values()
            ]
        return self._empty

    def forget_empty(self) -> None:
        """A host record changed: ``empty`` and the replica domains are computed again when
        next asked."""
        self._empty = None
        self._replica_domains = {}

    def set_fault_domains(self, availability_set: str) -> dict[str, int]:
        """How many members of an availability set hold capacity in each fault domain."""
        counts: dict[str, int] = defaultdict(int)
        for name in self.state.by_set.get(availability_set, ()):
            record = self.state.vms[name]
            if record.holds_capacity and record.host in self.state.hosts:
                counts[self.state.hosts[record.host].fault_domain] += 1
        return counts
