"""ClusterState: every VM and host the scheduler knows, with the indexes placement needs.

Owned by the core (one writer). Every change of a VM's assignment goes through ``assign`` so
that the per-host index and the per-host allocation never drift from the records.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from msgspec.structs import replace

from common.ids import HostId, VmName
from common.messages import VmState
from common.resources import ZERO, Resources
from scheduler.state import diskindex
from scheduler.state.copying import copied
from scheduler.state.diskindex import DiskIndex, DiskShare
from scheduler.state.model import ACTIVE_STATES, HostRecord, HostRuntime, ReplyRecord, VmRecord
from scheduler.state.netindex import NetIndex, NetShare, share_of
from scheduler.state.storage import ImageRecord, NetCounters, VnetRecord


@dataclass(slots=True)
class Changes:
    """The records changed since the last ``take_changes``: what one step stores."""

    vms: list[VmRecord]
    hosts: list[HostRecord]
    images: list[ImageRecord]
    replies: dict[str, ReplyRecord]
    vnets: list[VnetRecord]
    counters: NetCounters | None
    """The network counters, when they moved."""


@dataclass
class ClusterState:
    vms: dict[VmName, VmRecord] = field(default_factory=dict)
    hosts: dict[HostId, HostRecord] = field(default_factory=dict)
    runtimes: dict[HostId, HostRuntime] = field(default_factory=dict)
    replies: dict[str, ReplyRecord] = field(default_factory=dict)
    """Mutating requests by request_id: what each id was used for and, for VM operations, the
    reply a retry gets (scheduler/core/requests.py)."""
    by_host: dict[HostId, set[VmName]] = field(default_factory=lambda: defaultdict(set))
    incoming: dict[HostId, set[VmName]] = field(default_factory=dict)
    """Per destination host, the VMs migrating to it not yet switched over: each holds its
    resources there too (``allocated``) until the switchover or the end of the attempt."""
    migrating: dict[VmName, None] = field(default_factory=dict)
    """VMs with a live migration under way (an ordered set)."""
    allocated: dict[HostId, Resources] = field(default_factory=dict)
    by_set: dict[str, set[VmName]] = field(default_factory=lambda: defaultdict(set))
    pending: dict[VmName, None] = field(default_factory=dict)
    """VMs waiting for placement, in arrival order (a dict used as an ordered set)."""
    dirty_vms: set[VmName] = field(default_factory=set)
    dirty_hosts: set[HostId] = field(default_factory=set)
    images: dict[str, ImageRecord] = field(default_factory=dict)
    """The image gallery, by name."""
    dirty_images: set[str] = field(default_factory=set)
    new_replies: dict[str, ReplyRecord] = field(default_factory=dict)
    touched_hosts: set[HostId] = field(default_factory=set)
    """Hosts whose VMs changed since each was last reconciled against its inventory."""
    stale_views: set[HostId] = field(default_factory=set)
    """Hosts whose placement view (allocation, record, orphans) changed since placement last
    refreshed its index."""
    heard_since_s: float = float("-inf")
    """No up host was last heard before this (volatile: hosts are only ever heard later, and
    come up as they are heard): the liveness check walks the hosts only once it is
    ``dead_after_s`` old (scheduler/core/hosts.py ``check_liveness``)."""
    vnets: dict[str, VnetRecord] = field(default_factory=dict)
    """Virtual networks by name, deleted ones included (tombstones)."""
    changed_vnets: set[str] = field(default_factory=set)
    counters: NetCounters = field(default_factory=NetCounters)
    counters_changed: bool = False
    net: NetIndex = field(default_factory=NetIndex)
    """Addresses, network membership and ports, kept from the VM records (netindex.py)."""
    _net_before: NetShare | None = None
    disks: DiskIndex = field(default_factory=DiskIndex)
    """Replicas and disk space per host, kept from the VM records (diskindex.py)."""
    _disks_before: DiskShare | None = None
    read_vms: dict[VmName, VmRecord] | None = None
    """The VM records of this state's read copy (``read_copy``), which shares the ones that
    did not change since they were committed: ``before_change`` gives it a copy of its own
    first (copy on write; 100,000 VMs held twice took 24 MiB)."""

    @classmethod
    def from_records(
        cls,
        vms: list[VmRecord],
        hosts: list[HostRecord],
        replies: dict[str, ReplyRecord],
        images: list[ImageRecord] | None = None,
        vnets: list[VnetRecord] | None = None,
        counters: NetCounters | None = None,
    ) -> ClusterState:
        state = cls(hosts={h.host_id: h for h in hosts}, replies=dict(replies))
        state.images = {image.name: image for image in images or ()}
        state.counters = counters or NetCounters()
        for vnet in vnets or ():
            state.put_vnet(vnet)
        state.add_all(sorted(vms, key=lambda r: (r.pending_since or r.created_at, r.name)))
        # As loaded, every host has the configuration it reported: heartbeats tell.
        state.net.dirty_hosts.clear()
        state.net.touched.clear()
        state.net.dirty_vnets.clear()
        state.disks.dirty_hosts.clear()
        state.disks.dirty_disks.clear()
        return state

    def read_copy(self) -> ClusterState:
        """A copy for reads (scheduler/shell/readview.py): copies of the records and indexes, the
        same host runtimes (volatile, never stored), nothing to store; kept up to date with
        ``put_vm`` and ``put_vnet``. The indexes are copied, not built again from the records
        (at 100,000 VMs that took as long as building them). The VM records are shared until
        this state changes one (``read_vms``); one read copy per state."""
        copy = ClusterState(
            vms=dict(self.vms),  # shared, copied on write (``before_change``)
            hosts={host: replace(record) for host, record in self.hosts.items()},
            runtimes=self.runtimes,
            by_host=copied(self.by_host),
            incoming=copied(self.incoming),
            migrating=dict(self.migrating),
            allocated=dict(self.allocated),
            by_set=copied(self.by_set),
            pending=dict(self.pending),
            images={name: replace(image) for name, image in self.images.items()},
            vnets={name: replace(vnet) for name, vnet in self.vnets.items()},
            net=copied(self.net),
            disks=copied(self.disks),
        )
        self.read_vms = copy.vms
        return copy

    def add_all(self, records: list[VmRecord]) -> None:
        """``add_vm`` of each record, of VMs not held yet, in one pass: what a restart indexes
        (the allocations summed as numbers, the indexes' fast paths for a first record)."""
        cpu: dict[HostId, int] = defaultdict(int)
        mem: dict[HostId, int] = defaultdict(int)
        by_host, by_set, touched = self.by_host, self.by_set, self.touched_hosts
        for record in records:
            name, host = record.name, record.host
            assert name not in self.vms, f"{name} held already"
            self.vms[name] = record
            if host is not None:
                touched.add(host)
                if record.state in ACTIVE_STATES:
                    by_host[host].add(name)
                    cpu[host] += record.cpu_milli
                    mem[host] += record.mem_mib
            if record.migration is not None:
                self._index_migration(record, cpu, mem)
            if record.availability_set is not None:
                by_set[record.availability_set].add(name)
            if record.state is VmState.PENDING:
                self.pending[name] = None
            if record.nics:
                self.net.update(name, None, share_of(record))
            self.disks.add(name, record)
        for host, cpu_milli in cpu.items():
            self.allocated[host] = self.allocated.get(host, ZERO) + Resources(cpu_milli, mem[host])
        self.stale_views.update(cpu)
        self.stale_views.update(self.disks.copies_changed)
        self.disks.copies_changed.clear()

    def _index_migration(
        self, record: VmRecord, cpu: dict[HostId, int], mem: dict[HostId, int]
    ) -> None:
        migration = record.migration
        assert migration is not None
        self.migrating[record.name] = None
        self.touched_hosts.update((migration.target, migration.source))
        target = record.incoming_host
        if target is not None:
            self.incoming.setdefault(target, set()).add(record.name)
            cpu[target] += record.cpu_milli
            mem[target] += record.mem_mib

    def add_vm(self, record: VmRecord) -> None:
        old = self.vms.get(record.name)
        self.vms[record.name] = record
        self._index(record)
        self.net.update(record.name, share_of(old), share_of(record))
        self._disks_update(record.name, diskindex.share_of(old), diskindex.share_of(record))
        self._touch(record)

    def _touch(self, record: VmRecord) -> None:
        """The hosts whose inventories must be looked at again after ``record`` changed."""
        if record.host is not None:
            self.touched_hosts.add(record.host)
        if record.migration is not None:
            self.touched_hosts.add(record.migration.target)
            self.touched_hosts.add(record.migration.source)

    def put_vm(self, record: VmRecord) -> None:
        """Put ``record`` in place of the record of the same name (a read copy's update: no
        change is recorded for the store)."""
        old = self.vms.get(record.name)
        if old is not None:
            self._unindex(old)
            self.forget_set_member(old)
        self.vms[record.name] = record
        self._index(record)
        self.net.update(record.name, share_of(old), share_of(record))
        self._disks_update(record.name, diskindex.share_of(old), diskindex.share_of(record))

    def _disks_update(self, name: VmName, old: DiskShare | None, new: DiskShare | None) -> None:
        self.disks.update(name, old, new)
        if self.disks.copies_changed:
            self.stale_views.update(self.disks.copies_changed)
            self.disks.copies_changed.clear()

    def put_vnet(self, record: VnetRecord) -> None:
        """Put a network record in place (new, changed, or a read copy's update)."""
        old = self.vnets.get(record.name)
        self.vnets[record.name] = record
        if record.deleted:
            self.net.drop_vnet(record.name)
        elif old is None or old.deleted or old.cidr != record.cidr:
            self.net.add_vnet(record.name, record.cidr)

    def vnet_changed(self, name: str) -> None:
        """A network record changed (or is new): to be stored with this step."""
        self.changed_vnets.add(name)

    def count_up(self) -> NetCounters:
        """The counters, to be moved on and stored with this step."""
        self.counters_changed = True
        return self.counters

    def host_changed(self, host: HostId) -> None:
        """A host record changed: to be stored, and seen anew by placement."""
        self.dirty_hosts.add(host)
        self.stale_views.add(host)

    def _index(self, record: VmRecord) -> None:
        if record.holds_capacity and record.host is not None:
            self.stale_views.add(record.host)
            self.by_host[record.host].add(record.name)
            self.allocated[record.host] = self.allocated.get(record.host, ZERO) + record.resources
        if record.migration is not None:
            self.migrating[record.name] = None
        target = record.incoming_host
        if target is not None:
            self.stale_views.add(target)
            self.incoming.setdefault(target, set()).add(record.name)
            self.allocated[target] = self.allocated.get(target, ZERO) + record.resources
        if record.availability_set is not None:
            self.by_set[record.availability_set].add(record.name)
        if record.state == "pending":
            self.pending[record.name] = None

    def _unindex(self, record: VmRecord) -> None:
        if record.holds_capacity and record.host is not None:
            self.stale_views.add(record.host)
            self.by_host[record.host].discard(record.name)
            self.allocated[record.host] = self.allocated[record.host] - record.resources
        self.migrating.pop(record.name, None)
        target = record.incoming_host
        if target is not None:
            self.stale_views.add(target)
            names = self.incoming[target]
            names.discard(record.name)
            if not names:
                del self.incoming[target]
            self.allocated[target] = self.allocated[target] - record.resources
        self.pending.pop(record.name, None)

    def before_change(self, record: VmRecord) -> None:
        """``record`` is about to change (state, host, ...): take it out of the indexes.
        ``after_change`` puts it back; between the two, only its fields are set."""
        reads = self.read_vms
        if reads is not None and reads.get(record.name) is record:
            reads[record.name] = replace(record)  # reads keep it as it was committed
        self._touch(record)
        self._unindex(record)
        self._net_before = share_of(record)
        self._disks_before = diskindex.share_of(record)

    def after_change(self, record: VmRecord) -> None:
        """``record`` changed: index it again, and store it with this step."""
        self._index(record)
        self.net.update(record.name, self._net_before, share_of(record))
        self._net_before = None
        self._disks_update(record.name, self._disks_before, diskindex.share_of(record))
        self._disks_before = None
        self.dirty_vms.add(record.name)
        self._touch(record)

    def image_changed(self, name: str) -> None:
        """An image record changed (or is new): to be stored with this step."""
        self.dirty_images.add(name)

    def take_changes(self) -> Changes:
        """The records changed since the last call, and the new replies; forgets them."""
        if not (
            self.dirty_vms
            or self.dirty_hosts
            or self.dirty_images
            or self.new_replies
            or self.changed_vnets
            or self.counters_changed
        ):
            return Changes([], [], [], {}, [], None)  # most steps: heartbeats only
        changes = Changes(
            vms=[self.vms[name] for name in self.dirty_vms],
            hosts=[self.hosts[host] for host in self.dirty_hosts],
            images=[self.images[name] for name in self.dirty_images],
            replies=self.new_replies,
            vnets=[self.vnets[name] for name in self.changed_vnets],
            counters=self.counters if self.counters_changed else None,
        )
        self.dirty_vms, self.dirty_hosts, self.dirty_images = set(), set(), set()
        self.changed_vnets, self.counters_changed = set(), False
        self.new_replies = {}
        return changes

    def forget_set_member(self, record: VmRecord) -> None:
        if record.availability_set is not None:
            self.by_set[record.availability_set].discard(record.name)

    def remember_reply(self, request_id: str, reply: ReplyRecord) -> None:
        self.replies[request_id] = reply
        self.new_replies[request_id] = reply

    def check_invariants(self) -> None:
        """Raise AssertionError if an index disagrees with the records (used by tests)."""
        expected: dict[HostId, set[VmName]] = defaultdict(set)
        incoming: dict[HostId, set[VmName]] = defaultdict(set)
        for record in self.vms.values():
            if record.holds_capacity and record.host is not None:
                expected[record.host].add(record.name)
            if record.incoming_host is not None:
                incoming[record.incoming_host].add(record.name)
            assert (record.name in self.pending) == (record.state == "pending"), record.name
            assert (record.name in self.migrating) == (record.migration is not None), record.name
        assert self.incoming == incoming, "incoming index drift"
        for host in set(self.by_host) | set(incoming) | set(self.allocated):
            names = self.by_host.get(host, set())
            assert names == expected.get(host, set()), f"by_host drift on {host}"
            total = sum((self.vms[n].resources for n in names | incoming[host]), ZERO)
            assert self.allocated.get(host, ZERO) == total, f"allocation drift on {host}"
        for host, names in expected.items():
            assert self.by_host.get(host) == names, f"by_host missing {host}"
        fresh = NetIndex()
        for vnet in self.vnets.values():
            if not vnet.deleted:
                fresh.add_vnet(vnet.name, vnet.cidr)
        for record in self.vms.values():
            fresh.update(record.name, None, share_of(record))
        problems = self.net.same_as(fresh)
        assert not problems, f"network index drift: {problems}"
        disks = DiskIndex()
        for record in self.vms.values():
            disks.update(record.name, None, diskindex.share_of(record))
        problems = self.disks.same_as(disks)
        assert not problems, f"disk index drift: {problems}"
