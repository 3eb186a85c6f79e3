"""The scheduler's cluster state: pure data, mutated only by the core's single writer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

import msgspec

from common.ids import HostId, VmName
from common.messages import ObservedVm, VmReply, VmState
from common.resources import ZERO, Resources
from scheduler.state.storage import DiskRecord, EndpointRecord, NicRecord

ACTIVE_STATES = frozenset(
    {VmState.SCHEDULED, VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.DELETING}
)
"""States in which a VM is assigned to a host and holds capacity there."""


@dataclass(frozen=True, slots=True)
class HostView:
    """What placement sees of a host. Immutable: reserving returns a new view."""

    host_id: HostId
    region: str
    fault_domain: str
    capacity: Resources
    allocated: Resources = ZERO
    cpu_overcommit: float = 1.0
    up: bool = True
    cordoned: bool = False
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def schedulable(self) -> Resources:
        """Capacity placement may hand out: CPU scaled by overcommit, memory never."""
        return Resources(int(self.capacity.cpu_milli * self.cpu_overcommit), self.capacity.mem_mib)

    @property
    def free(self) -> Resources:
        return self.schedulable - self.allocated

    def with_reserved(self, resources: Resources) -> HostView:
        return replace(self, allocated=self.allocated + resources)


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

    @property
    def resources(self) -> Resources:
        return Resources(self.cpu_milli, self.mem_mib)

    @property
    def holds_capacity(self) -> bool:
        return self.host is not None and self.state in ACTIVE_STATES


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
