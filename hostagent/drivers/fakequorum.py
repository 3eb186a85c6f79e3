"""Replicated disks in the fake driver: the quorum membership of a VM's disk, joins that take
time by size, and a write counter per copy, so that a test or the chaos observer can check that
a failover never starts from a copy behind the last write the guest had acknowledged.

The copies of every disk live in one :class:`DiskLedger` shared by the simulated hosts of a
process (the fake cannot see other hosts otherwise): how many writes each copy (disk, host)
has, and which hosts' replica servers are gone. A running VM writes on :meth:`FakeQuorums.tick`
(whenever its host looks at it, at most once every ``WRITE_EVERY_S`` of its clock, so that the
cost of a host's report does not grow with how often it is asked) and on
:meth:`FakeQuorums.write`: the write lands on every copy
whose host is up and is acknowledged only if every copy took it; a copy on a host that is gone
is reported failed and the disk takes no acknowledged write until ``SetDiskReplicas`` drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import DriverError
from common.messages import VmSpec
from common.replica_messages import DiskReplicas, SetDiskReplicas
from common.spec_messages import DiskStorage

DEFAULT_JOIN_MIB_S = 200.0
WRITE_EVERY_S = 0.1


@dataclass
class DiskLedger:
    """Every copy's write count, by disk and host; the hosts whose replicas are gone."""

    writes: dict[str, dict[str, int]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    def count(self, disk_id: str, host: str) -> int | None:
        return self.writes.get(disk_id, {}).get(host)

    def made(self, disk_id: str, host: str, copied_from: str | None = None) -> None:
        """A copy is made on ``host``: empty, or with what ``copied_from``'s copy has."""
        source = self.count(disk_id, copied_from) if copied_from else None
        self.writes.setdefault(disk_id, {})[host] = source or 0

    def deleted(self, disk_id: str, host: str) -> None:
        self.writes.get(disk_id, {}).pop(host, None)

    def holds(self, disk_id: str, host: str) -> bool:
        """The host's disks still have its copy of ``disk_id`` (an agent started again finds
        it there)."""
        return host not in self.down and self.count(disk_id, host) is not None

    def host_gone(self, host: str) -> None:
        """The host's replica server is gone: its copies take no write any more."""
        self.down.add(host)

    def wrote(self, disk_id: str, host: str) -> bool:
        """One guest write lands on the copy on ``host``; False when that host is gone."""
        if host in self.down:
            return False
        copies = self.writes.setdefault(disk_id, {})
        copies[host] = copies.get(host, 0) + 1
        return True

    def acknowledged(self, disk_id: str) -> None:
        """A guest write to ``disk_id`` was acknowledged (every copy it went to took it). Kept
        nowhere here: each VM's :attr:`FakeDisk.acked` is enough in one process; the agents of
        a cluster record theirs in files (hostagent/drivers/fakeledger.py)."""


@dataclass
class _Join:
    host: str
    started_s: float
    duration_s: float


@dataclass
class FakeDisk:
    disk_id: str
    size_mib: int
    members: list[str]
    failed: list[str] = field(default_factory=list)
    joins: dict[str, _Join] = field(default_factory=dict)
    acked: int = 0
    """Writes the guest had acknowledged (each is on every member at the time)."""

    def report(self, now_s: float) -> DiskReplicas:
        joining = {
            host: min((now_s - join.started_s) / join.duration_s, 1.0) if join.duration_s else 1.0
            for host, join in self.joins.items()
        }
        return DiskReplicas(
            disk_id=self.disk_id, in_sync=list(self.members), joining=joining, failed=self.failed
        )


@dataclass
class FakeQuorums:
    """The replicated disks of one fake VM."""

    ledger: DiskLedger
    now_s: Callable[[], float]
    disks: list[FakeDisk]
    join_mib_s: float = DEFAULT_JOIN_MIB_S
    last_write_s: float = float("-inf")
    _reports: list[DiskReplicas] | None = None
    """The last report, while it holds (no join under way, no copy changed since)."""

    @classmethod
    def of(
        cls, spec: VmSpec, ledger: DiskLedger, now_s: Callable[[], float], join_mib_s: float
    ) -> FakeQuorums | None:
        disks = [
            FakeDisk(disk.disk_id, disk.size_mib or 1024, [ref.host for ref in disk.replicas])
            for disk in spec.disks
            if disk.storage is DiskStorage.REPLICATED
        ]
        return cls(ledger, now_s, disks, join_mib_s) if disks else None

    @property
    def held(self) -> bool:
        """The last report still holds (no join under way, no copy changed since)."""
        return self._reports is not None

    @property
    def stopped(self) -> bool:
        """A failed copy stopped the VM (it is still reported running)."""
        return any(disk.failed for disk in self.disks)

    def report(self) -> list[DiskReplicas]:
        if self._reports is not None:
            return list(self._reports)
        now_s = self.now_s()
        reports = [disk.report(now_s) for disk in self.disks]
        if not any(disk.joins for disk in self.disks):
            self._reports = reports  # steady: the same until a copy changes
        return list(reports)

    def disk(self, disk_id: str) -> FakeDisk:
        for disk in self.disks:
            if disk.disk_id == disk_id:
                return disk
        raise DriverError(f"no replicated disk {disk_id}", retryable=False)

    def tick(self, running: bool) -> None:
        """Joins that are done come in; a running VM writes once (unless it wrote less than
        ``WRITE_EVERY_S`` ago)."""
        now_s = self.now_s()
        for disk in self.disks:
            if not disk.joins:
                continue
            for host, join in list(disk.joins.items()):
                if now_s - join.started_s >= join.duration_s and host not in self.ledger.down:
                    del disk.joins[host]
                    self._reports = None
                    self.ledger.made(disk.disk_id, host, copied_from=disk.members[0])
                    disk.members.append(host)
        if running and now_s - self.last_write_s >= WRITE_EVERY_S - 1e-9:
            self.last_write_s = now_s
            for disk in self.disks:
                self.write(disk)

    def write(self, disk: FakeDisk) -> bool:
        """One guest write to ``disk``; True when it was acknowledged."""
        if disk.failed:
            return False  # the VM is stopped: the write waits
        gone = [host for host in disk.members if not self.ledger.wrote(disk.disk_id, host)]
        if gone:
            disk.failed = gone
            self._reports = None
            return False
        disk.acked += 1
        self.ledger.acknowledged(disk.disk_id)
        return True

    def set(self, command: SetDiskReplicas) -> None:
        """Drop the copies not named (a VM stopped by a failed copy goes on: its write is
        retried on the copies kept) and start the joins."""
        disk = self.disk(command.disk_id)
        self._reports = None
        wanted = {ref.host for ref in command.replicas}
        kept = [host for host in disk.members if host in wanted]
        if not kept:
            raise DriverError(f"disk {disk.disk_id} would have no copy left", retryable=False)
        was_stopped = bool(disk.failed)
        disk.members = kept
        disk.failed = [host for host in disk.failed if host in wanted]
        if was_stopped and not disk.failed:
            self.write(disk)
        now_s = self.now_s()
        for ref in command.joining:
            if ref.host not in kept and ref.host not in disk.joins:
                speed = command.speed_mib_s or self.join_mib_s
                disk.joins[ref.host] = _Join(ref.host, now_s, disk.size_mib / speed)
