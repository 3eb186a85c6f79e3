"""The simulated replica backend (with the fake driver): the accounts of the replica server
without a file or a process, so fleet-scale tests and benchmarks run the agent's replica paths.

A replica takes its full size on the host (an OS disk: ``os_disk_mib``, the nominal size the
scheduler counts when it does not know the image's). A new one is made at once; a copy of
another host's replica (``fill_from``) is filling for ``size / bandwidth`` seconds (its
``fill_mib_s``, else the host's ``fill_mib_s``), with progress by the clock, and ready after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from common.replica_messages import ConfigureReplicas, ReplicaSpec, ReplicaStatus, UpdateReplicas
from common.replicaset import ReplicaSet
from hostagent.drivers.fakequorum import DiskLedger
from hostagent.replicaplan import Held, check_disk_ids, lost, plan_replicas, replica_statuses
from hostagent.replicas import ReplicaBackend, ReplicaError

OS_DISK_MIB = 1024
SIMULATED_PORT = 10809
MADE = Held(made=True, exported=True)


@dataclass(frozen=True, slots=True)
class SimReplica:
    spec: ReplicaSpec
    size_mib: int
    made_at_s: float
    """When it is made (filled); ready from then on."""
    started_s: float


def replica_size_mib(spec: ReplicaSpec, os_disk_mib: int = OS_DISK_MIB) -> int:
    return spec.size_mib if spec.size_mib > 0 else os_disk_mib


@dataclass
class SimulatedReplicas:
    now_s: Callable[[], float]
    fill_mib_s: float = 1024.0
    os_disk_mib: int = OS_DISK_MIB
    ledger: DiskLedger | None = None
    """Where the copies' write counts are kept (with the fake driver of a simulated pool)."""
    host_id: str = ""
    name: str = "simulated"
    held: dict[str, SimReplica] = field(default_factory=dict)
    _counted: set[str] = field(default_factory=set)
    _set: ReplicaSet = field(default_factory=ReplicaSet)
    """The set applied: the named replicas, by disk id."""
    _existing: set[str] = field(default_factory=set)
    """Named replicas made before (as the scheduler says, or made here since): if not held,
    lost, never made anew."""
    _lost: set[str] = field(default_factory=set)
    _pending: dict[str, SimReplica] = field(default_factory=dict)
    """The held replicas not made yet (being filled): a heartbeat's statuses look at these
    only, so a report costs nothing per replica that is ready."""
    _digest: str = ""
    _port: int = SIMULATED_PORT

    @property
    def port(self) -> int:
        return self._port

    @property
    def applied_digest(self) -> str:
        return self._digest

    @property
    def replica_set(self) -> ReplicaSet:
        """The set applied (read only)."""
        return self._set

    async def apply(self, config: ConfigureReplicas) -> None:
        self.apply_now(config)

    async def update(self, update: UpdateReplicas) -> None:
        self.update_now(update)

    def apply_now(self, config: ConfigureReplicas) -> None:
        """:meth:`apply`, synchronous (the simulated pool and unit tests)."""
        if why := check_disk_ids(config.replicas):
            raise ReplicaError(why)
        now_s = self.now_s()
        self._adopt(config.replicas, now_s)
        named = {spec.disk_id for spec in config.replicas}
        self._existing = set(config.existing) | (self._existing & named)
        plan = plan_replicas(config.replicas, self._held(now_s), self._existing)
        for disk_id in plan.delete:
            self._delete(disk_id)
        for spec in plan.make:
            self._make(spec, now_s)
        self._set = ReplicaSet.of(config)
        self._lost = named & self._existing - self.held.keys()
        self._digest = config.digest

    def update_now(self, update: UpdateReplicas) -> None:
        """:meth:`update`, synchronous: O(the update), whatever the host holds."""
        specs = [*update.added, *update.changed]
        if why := check_disk_ids(specs):
            raise ReplicaError(why)
        if misfit := self._set.apply_checked(update):
            raise ReplicaError(f"replica update not applied: {misfit}")
        now_s = self.now_s()
        self._made_by(now_s)
        for disk_id in update.removed:
            if disk_id in self.held:
                self._delete(disk_id)
            self._existing.discard(disk_id)
            self._lost.discard(disk_id)
        self._existing.update(update.existing)
        self._adopt(specs, now_s)
        for spec in specs:
            disk_id = spec.disk_id
            if disk_id in self.held:
                continue  # made, or being made: as the plan of the whole set would leave it
            if disk_id in self._existing:
                self._lost.add(disk_id)
            else:
                self._make(spec, now_s)
        self._digest = update.digest

    def _make(self, spec: ReplicaSpec, now_s: float) -> None:
        size_mib = replica_size_mib(spec, self.os_disk_mib)
        fill_s = 0.0
        if spec.fill_from is not None:
            fill_s = size_mib / (spec.fill_mib_s or self.fill_mib_s)
        replica = self.held[spec.disk_id] = SimReplica(spec, size_mib, now_s + fill_s, now_s)
        if fill_s > 0:
            self._pending[spec.disk_id] = replica
        else:
            self._count(replica)

    def _delete(self, disk_id: str) -> None:
        del self.held[disk_id]
        self._pending.pop(disk_id, None)
        self._counted.discard(disk_id)
        if self.ledger is not None:
            self.ledger.deleted(disk_id, self.host_id)

    def statuses(self) -> list[ReplicaStatus]:
        now_s = self.now_s()
        self._made_by(now_s)
        pending = [spec for d in self._pending if (spec := self._set.spec(d)) is not None]
        held = {d: self._state(r, now_s) for d, r in self._pending.items()}
        return [lost(d) for d in sorted(self._lost)] + replica_statuses(pending, held)

    def ready(self, disk_id: str) -> bool:
        replica = self.held.get(disk_id)
        return replica is not None and replica.made_at_s <= self.now_s()

    def used_mib(self) -> int:
        return sum(replica.size_mib for replica in self.held.values())

    def _held(self, now_s: float) -> dict[str, Held]:
        self._made_by(now_s)
        held = dict.fromkeys(self.held, MADE)
        for disk_id, replica in self._pending.items():
            held[disk_id] = self._state(replica, now_s)
        return held

    def _adopt(self, specs: list[ReplicaSpec], now_s: float) -> None:
        """Copies its disks still have that it does not know of (the agent started again):
        held as they are, as the real replica server finds its files."""
        if self.ledger is None:
            return
        for spec in specs:
            disk_id = spec.disk_id
            if disk_id not in self.held and self.ledger.holds(disk_id, self.host_id):
                size_mib = replica_size_mib(spec, self.os_disk_mib)
                self.held[disk_id] = SimReplica(spec, size_mib, now_s, now_s)
                self._counted.add(disk_id)
                self._existing.add(disk_id)

    def _made_by(self, now_s: float) -> None:
        """The copies whose fill is done by ``now_s`` are made (and enter the ledger)."""
        done = [r for r in self._pending.values() if r.made_at_s <= now_s]
        for replica in done:
            del self._pending[replica.spec.disk_id]
            self._count(replica)

    @staticmethod
    def _state(replica: SimReplica, now_s: float) -> Held:
        if replica.made_at_s <= now_s:
            return MADE
        span_s = replica.made_at_s - replica.started_s
        return Held(filling=(now_s - replica.started_s) / span_s)

    def _count(self, replica: SimReplica) -> None:
        """A copy just made enters the ledger: empty, or as its source's copy is now."""
        disk_id = replica.spec.disk_id
        self._existing.add(disk_id)
        if self.ledger is None or disk_id in self._counted:
            return
        self._counted.add(disk_id)
        source = replica.spec.fill_from
        self.ledger.made(disk_id, self.host_id, source.host if source is not None else None)

    async def close(self) -> None:
        return None


_: type[ReplicaBackend] = SimulatedReplicas
