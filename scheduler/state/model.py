"""The scheduler's cluster state: pure data, mutated only by the core's single writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from common.ids import HostId, VmName
from common.messages import HeartbeatAck, ObservedVm, VmReply, VmState
from common.migration_messages import MigrationCause, MigrationPhase
from common.replica_messages import ReplicaStatus
from common.resources import ZERO, Resources
from scheduler.state.storage import DiskRecord, EndpointRecord, NicRecord

ACTIVE_STATES = frozenset(
    {VmState.SCHEDULED, VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.DELETING}
)
"""States in which a VM is assigned to a host and holds capacity there."""


class HostView(msgspec.Struct, frozen=True, gc=False):
    """What placement sees of a host. Immutable: reserving returns a new view (a struct: a
    reservation copies one per placement decision, 0.4 us where a dataclass took 3)."""

    host_id: HostId
    region: str
    fault_domain: str
    capacity: Resources
    allocated: Resources = ZERO
    cpu_overcommit: float = 1.0
    up: bool = True
    cordoned: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    disk_capacity_mib: int = 0
    """Space for disks and replicas; 0: not reported, not limited."""
    disk_used_mib: int = 0
    """Space the disks and replicas placed on it take (their full size)."""
    serves_replicas: bool = False
    """It runs a replica server: it may hold copies of replicated disks."""

    @property
    def schedulable(self) -> Resources:
        """Capacity placement may hand out: CPU scaled by overcommit, memory never."""
        return Resources(int(self.capacity.cpu_milli * self.cpu_overcommit), self.capacity.mem_mib)

    @property
    def free(self) -> Resources:
        return self.schedulable - self.allocated

    def with_reserved(self, resources: Resources, disk_mib: int = 0) -> HostView:
        return msgspec.structs.replace(
            self, allocated=self.allocated + resources, disk_used_mib=self.disk_used_mib + disk_mib
        )

    def with_reserved_disk(self, disk_mib: int) -> HostView:
        return msgspec.structs.replace(self, disk_used_mib=self.disk_used_mib + disk_mib)

    def has_disk_room(self, disk_mib: int) -> bool:
        """Whether ``disk_mib`` more fits on its disks (always, when not limited or none)."""
        if disk_mib <= 0 or self.disk_capacity_mib <= 0:
            return True
        return self.disk_used_mib + disk_mib <= self.disk_capacity_mib


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    name: VmName
    resources: Resources
    region: str | None = None
    availability_set: str | None = None
    avoid_hosts: frozenset[HostId] = frozenset()
    """Hosts this VM must not go to (e.g. where its start just failed)."""
    pinned_host: HostId | None = None
    """The only host this VM may go to: its host-local disks live there."""
    disk_mib: int = 0
    """Disk space the VM needs on its host (new disks or copies made there)."""
    preferred_hosts: tuple[HostId, ...] = ()
    """Hosts to choose among first, when any of them can take it: they hold a current copy
    of its replicated disks."""


MIGRATION_RESERVES = frozenset(
    {MigrationPhase.PREPARING, MigrationPhase.COPYING, MigrationPhase.CANCELLING}
)
"""Phases in which a migration's destination holds the VM's resources besides its host (from
the switchover on, the destination *is* its host)."""


class MigrationRecord(msgspec.Struct, kw_only=True, gc=False):
    """A live migration under way (scheduler/core/migrations.py), as persisted with its VM."""

    source: HostId
    target: HostId
    attempt: int
    """The generation the VM gets on ``target`` (above any it ever had)."""
    cause: MigrationCause
    phase: MigrationPhase
    started_at: datetime
    progress_at: datetime
    """When the attempt last moved on (began, a phase, more bytes copied)."""
    transferred_mib: int = 0
    total_mib: int = 0
    address: str = ""
    migration_port: int = 0
    nbd_port: int = 0
    """Where the destination awaits the VM's state, as it reported (for ``MigrateOut``)."""
    reason: str = ""
    """``cancelling``: why the attempt is being ended."""


class VmRecord(msgspec.Struct, kw_only=True, gc=False):
    """Desired state of one VM, as persisted in the store."""

    name: VmName
    size: str
    cpu_milli: int
    mem_mib: int
    image: str
    region: str | None
    availability_set: str | None
    state: VmState
    host: HostId | None = None
    generation: int = 0
    reason: str = ""
    created_at: datetime
    updated_at: datetime
    pending_since: datetime | None = None
    start_attempts: int = 0
    failed_hosts: list[HostId] = []
    drained_from: HostId | None = None
    """Set while a drain moves this VM off that host: stopping there, then placed elsewhere;
    cleared once it runs again (or is stopped, deleted or failed)."""
    disks: list[DiskRecord] = []
    """OS disk first, then data disks (see scheduler/core/disks.py)."""
    disk_serial: int = 0
    """Data disks made so far: numbers new data disk ids, which are never reused."""
    recovering: bool = False
    """Taken off a host declared dead and not running again yet: its placement counts against
    the recovery rate limit (``recovery_per_host_per_tick``). Stored, so a restart keeps it."""
    nics: list[NicRecord] = []
    """In order; their addresses and MACs stay the VM's until it is deleted."""
    endpoints: list[EndpointRecord] = []
    migration: MigrationRecord | None = None
    """A live migration under way: the VM runs on ``host`` and is also reserved on the
    destination until the switchover (then ``host`` is the destination)."""
    max_generation: int = 0
    """The highest generation the VM was ever given or promised (a migration attempt's
    number, even one that was aborted): a new generation is always above it."""
    migrated_at: datetime | None = None
    """When the VM last finished a live migration (the rebalancer's cool-down)."""

    @property
    def resources(self) -> Resources:
        return Resources(self.cpu_milli, self.mem_mib)

    @property
    def holds_capacity(self) -> bool:
        return self.host is not None and self.state in ACTIVE_STATES

    @property
    def incoming_host(self) -> HostId | None:
        """The destination of a migration not yet switched over (it holds capacity for the
        VM there too), if any."""
        migration = self.migration
        if migration is None or migration.phase not in MIGRATION_RESERVES:
            return None
        return migration.target if self.holds_capacity else None

    def next_generation(self) -> int:
        """A generation the VM never had nor was promised: each move takes a new one."""
        return max(self.generation, self.max_generation) + 1


class ReplyRecord(msgspec.Struct, kw_only=True, gc=False):
    """What a request id stands for, as persisted: the one request it named (operation, target
    and a digest of its body) and, once a VM operation succeeded, the reply its retries get."""

    op: str
    target: str
    digest: str
    reply: VmReply | None = None

    def names(self, request: ReplyRecord) -> bool:
        """``request`` is the request this id was first used for (a retry of it)."""
        if self.op == "":  # stored before bindings existed (schema 1): only its VM is known
            return self.target in ("", request.target)
        return (self.op, self.target, self.digest) == (request.op, request.target, request.digest)


class HostRecord(msgspec.Struct, kw_only=True, gc=False):
    """What the scheduler knows of a host, as persisted in the store."""

    host_id: HostId
    region: str
    fault_domain: str
    capacity: Resources
    labels: dict[str, str] = {}
    cpu_overcommit: float | None = None
    driver: str = "fake"
    up: bool = True
    cordoned: bool = False
    draining: bool = False
    boot_id: str = ""
    drain_reported: int | None = None
    """While draining: the VMs left that the last host event reported (a new event goes out
    only when it changes). Stored, so a restart does not report the same count again."""
    underlay_ip: str = ""
    """Where other hosts reach this one (VXLAN peers, endpoints); empty: not reported."""
    drain_cold: bool = False
    """While draining: move the VMs by stop and start (``host drain --cold``), not live."""
    replica_port: int = 0
    """The port of its replica server on ``underlay_ip`` (127.0.0.1 when it has none); 0: it
    serves no replicas, and gets none."""
    disk_capacity_mib: int = 0
    """Space for disks and replicas, as its agent reports it; 0: not limited."""


@dataclass(slots=True)
class HostRuntime:
    """Volatile knowledge of a host (never persisted): liveness and its last inventory."""

    last_seen_s: float
    observed: dict[VmName, ObservedVm] = field(default_factory=dict)
    orphaned: Resources = ZERO
    """Capacity held on the host by VMs that are not desired there (being destroyed)."""
    fenced: bool = False
    boot_id: str = ""
    """The agent boot that holds the host id (set when its first report is taken in)."""
    heard_s: float = float("-inf")
    """When the holding boot was last heard (unlike ``last_seen_s``, never a granted window)."""
    refused_boot: str = ""
    """The last boot refused the host id (reported on the event stream once)."""
    last_seq: int = -1
    inventory_digest: str = ""
    """The agent's digest of ``observed``: a report with the same digest and no VMs stands
    for the same inventory."""
    settled: bool = False
    """The last reconcile of this host found nothing to do; it stays true until one of the
    host's VMs changes (``ClusterState.touched_hosts``) or its inventory does."""
    network_digest: str = ""
    """The digest of the network configuration the host last reported applied."""
    replica_digest: str = ""
    """The digest of the replica set the host last reported applied."""
    replicas_held: set[str] = field(default_factory=set)
    """The disks of the replica set it applied last (as far as known): what it holds."""
    replicas_held_digest: str = ""
    """The digest of the set ``replicas_held`` was taken from (taken again only if it differs)."""
    replicas_unready: dict[str, ReplicaStatus] = field(default_factory=dict)
    """Its replicas that are not ready yet (creating, filling, failed), as it reported."""
    replicas_known: bool = False
    """It applied the wanted replica set since it was last taken in (a start, a host back
    from the dead, an agent that lost its state): only then is it known to hold no old copy
    the records forgot, and only then does it get new copies."""
    ack: HeartbeatAck | None = None
    """The last ack granted to the holding boot (None: none yet): an unchanged heartbeat gets it
    again with its own number (scheduler/core/hosts.py ``steady``)."""

    def forget_reports(self) -> None:
        """The host was declared dead: what it reported is not known any more (its inventory,
        its networks, its replicas), until it reports again."""
        self.observed = {}
        self.inventory_digest = self.network_digest = self.replica_digest = ""
        self.replicas_held, self.replicas_unready = set(), {}
        self.replicas_held_digest = ""
        self.replicas_known = self.settled = False
        self.orphaned = ZERO
