"""Replicated disks in the fake driver: the quorum membership of a VM's disk, joins that take
time by size, and a write counter per copy, so that a test or the chaos observer can check that
a failover never starts from a copy behind the last write the guest had acknowledged.

The copies of every disk live in one :class:`DiskLedger` shared by the simulated hosts of a
process (the fake cannot see other hosts otherwise): how many writes each copy (disk, host)
has, and which hosts' replica servers are gone. A running VM writes once in each of its host's
write rounds (:class:`WriteRounds`: a look at the host's VMs, at most once every
``WRITE_EVERY_S`` of its clock, so that the cost of a host's report does not grow with how
often it is asked) and on :meth:`FakeQuorums.write`: the write lands on every copy whose host
is up and is acknowledged only if every copy took it; a copy on a host that is gone is reported
failed and the disk takes no acknowledged write until ``SetDiskReplicas`` drops it.

The rounds' writes are counted in bulk when they are asked for (:meth:`FakeQuorums.settle`):
when the ledger is read (a copy's count, a copy filled from another), when a host is gone
(every writer first, then the host: what was written before stays written), when the VM
changes (starts or stops writing, its copies change, it goes) or is looked at
(:meth:`FakeDriver.quorums`). A round looks only at the VMs that need it: joins under way, or
a copy on a host that is gone (whose write fails); every VM after a host is gone. A ledger
whose hosts may go behind its back (files shared by processes) has every VM write at every
round (``settles_lazily`` False).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from common.errors import DriverError
from common.messages import VmSpec
from common.replica_messages import DiskReplicas, SetDiskReplicas
from common.spec_messages import DiskStorage

DEFAULT_JOIN_MIB_S = 200.0
WRITE_EVERY_S = 0.1
"""The shortest time between two write rounds of a host."""


@dataclass
class DiskLedger:
    """Every copy's write count, by disk and host; the hosts whose replicas are gone."""

    _writes: dict[str, dict[str, int]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    epoch: int = 0
    """Moves whenever a host is gone: every writer then looks at its copies at its next round."""
    _writers: dict[str, list[FakeQuorums]] = field(default_factory=dict)
    """The VMs writing to each disk, whose rounds' writes may not be counted yet."""
    settles_lazily: ClassVar[bool] = True
    """Hosts go only through :meth:`host_gone` (so their writers may count their writes when
    asked)."""

    @property
    def writes(self) -> dict[str, dict[str, int]]:
        """Every copy's write count (every writer's writes counted first)."""
        for disk_id in list(self._writers):
            self.settle(disk_id)
        return self._writes

    def register(self, writer: FakeQuorums) -> None:
        for disk in writer.disks:
            self._writers.setdefault(disk.disk_id, []).append(writer)

    def unregister(self, writer: FakeQuorums) -> None:
        for disk in writer.disks:
            left = [w for w in self._writers.get(disk.disk_id, []) if w is not writer]
            if left:
                self._writers[disk.disk_id] = left
            else:
                self._writers.pop(disk.disk_id, None)

    def settle(self, disk_id: str) -> None:
        """Count the writes to ``disk_id`` not counted yet."""
        for writer in self._writers.get(disk_id, ()):
            writer.settle()

    def count(self, disk_id: str, host: str) -> int | None:
        self.settle(disk_id)
        return self._writes.get(disk_id, {}).get(host)

    def made(self, disk_id: str, host: str, copied_from: str | None = None) -> None:
        """A copy is made on ``host``: empty, or with what ``copied_from``'s copy has."""
        source = self.count(disk_id, copied_from) if copied_from else None
        self._writes.setdefault(disk_id, {})[host] = source or 0

    def deleted(self, disk_id: str, host: str) -> None:
        self.settle(disk_id)
        self._writes.get(disk_id, {}).pop(host, None)

    def holds(self, disk_id: str, host: str) -> bool:
        """The host's disks still have its copy of ``disk_id`` (an agent started again finds
        it there)."""
        return host not in self.down and self.count(disk_id, host) is not None

    def host_gone(self, host: str) -> None:
        """The host's replica server is gone: its copies take no write any more (the writes
        made before are counted first)."""
        for disk_id in list(self._writers):
            self.settle(disk_id)
        self.down.add(host)
        self.epoch += 1

    def writable(self, host: str) -> bool:
        return host not in self.down

    def wrote(self, disk_id: str, host: str, times: int = 1) -> bool:
        """``times`` guest writes land on the copy on ``host``; False when that host is gone."""
        if host in self.down:
            return False
        copies = self._writes.setdefault(disk_id, {})
        copies[host] = copies.get(host, 0) + times
        return True

    def acknowledged(self, disk_id: str, times: int = 1) -> None:
        """Guest writes to ``disk_id`` were acknowledged (every copy they went to took them).
        Kept nowhere here: each VM's :attr:`FakeDisk.acked` is enough in one process; the
        agents of a cluster record theirs in files (hostagent/drivers/fakeledger.py)."""


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


@dataclass(eq=False)
class FakeQuorums:
    """The replicated disks of one fake VM."""

    ledger: DiskLedger
    now_s: Callable[[], float]
    disks: list[FakeDisk]
    join_mib_s: float = DEFAULT_JOIN_MIB_S
    rounds: WriteRounds | None = None
    """Its host's write rounds (None: none, it writes on :meth:`write` only)."""
    counted: int = 0
    """The rounds whose writes are counted."""
    writing: bool = False
    """It writes at each round (it runs)."""
    _reports: list[DiskReplicas] | None = None
    """The last report, while it holds (no join under way, no copy changed since)."""

    @classmethod
    def of(
        cls,
        spec: VmSpec,
        ledger: DiskLedger,
        now_s: Callable[[], float],
        join_mib_s: float,
        rounds: WriteRounds | None = None,
    ) -> FakeQuorums | None:
        disks = [
            FakeDisk(disk.disk_id, disk.size_mib or 1024, [ref.host for ref in disk.replicas])
            for disk in spec.disks
            if disk.storage is DiskStorage.REPLICATED
        ]
        if not disks:
            return None
        counted = rounds.count if rounds is not None else 0
        quorums = cls(ledger, now_s, disks, join_mib_s, rounds, counted=counted)
        ledger.register(quorums)
        return quorums

    @property
    def held(self) -> bool:
        """The last report still holds (no join under way, no copy changed since)."""
        return self._reports is not None

    @property
    def stopped(self) -> bool:
        """A failed copy stopped the VM (it is still reported running)."""
        return any(disk.failed for disk in self.disks)

    @property
    def watched(self) -> bool:
        """Each round must look at it: a join under way, or a copy on a host that is gone."""
        ledger = self.ledger
        return any(
            disk.joins or not all(ledger.writable(h) for h in disk.members) for disk in self.disks
        )

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

    def settle(self, rounds: int | None = None) -> None:
        """Count the writes of its host's rounds (up to ``rounds``) not counted yet."""
        if self.rounds is None:
            return
        upto = self.rounds.count if rounds is None else rounds
        times = upto - self.counted
        if times <= 0:
            return
        self.counted = upto
        if self.writing:
            for disk in self.disks:
                self._write(disk, times)

    def running(self, running: bool) -> None:
        """The VM runs (it writes at each round) or not, from now on."""
        if running != self.writing:
            self.settle()
            self.writing = running

    def retire(self) -> None:
        """The VM is gone from its host: its writes are counted, and it writes no more."""
        self.settle()
        self.writing = False
        self.ledger.unregister(self)

    def tick(self) -> None:
        """A round: joins that are done come in, then a running VM writes once."""
        now_s = self.now_s()
        for disk in self.disks:
            if not disk.joins:
                continue
            if self.rounds is not None:
                self.settle(self.rounds.count - 1)  # the rounds before this one
            for host, join in list(disk.joins.items()):
                if now_s - join.started_s >= join.duration_s and host not in self.ledger.down:
                    del disk.joins[host]
                    self._reports = None
                    self.ledger.made(disk.disk_id, host, copied_from=disk.members[0])
                    disk.members.append(host)
        self.settle()

    def write(self, disk: FakeDisk) -> bool:
        """One guest write to ``disk``; True when it was acknowledged."""
        self.settle()
        return self._write(disk, 1)

    def _write(self, disk: FakeDisk, times: int) -> bool:
        """``times`` guest writes to ``disk``, one after the other; True when they were all
        acknowledged (the first to a copy that is gone fails the disk: the others wait)."""
        if disk.failed:
            return False  # the VM is stopped: the write waits
        gone = [host for host in disk.members if not self.ledger.wrote(disk.disk_id, host)]
        if gone:
            disk.failed = gone
            self._reports = None
            return False
        if times > 1:
            for host in disk.members:
                self.ledger.wrote(disk.disk_id, host, times - 1)
        disk.acked += times
        self.ledger.acknowledged(disk.disk_id, times)
        return True

    def set(self, command: SetDiskReplicas) -> None:
        """Drop the copies not named (a VM stopped by a failed copy goes on: its write is
        retried on the copies kept) and start the joins."""
        disk = self.disk(command.disk_id)
        self.settle()
        self._reports = None
        wanted = {ref.host for ref in command.replicas}
        kept = [host for host in disk.members if host in wanted]
        if not kept:
            raise DriverError(f"disk {disk.disk_id} would have no copy left", retryable=False)
        was_stopped = bool(disk.failed)
        disk.members = kept
        disk.failed = [host for host in disk.failed if host in wanted]
        if was_stopped and not disk.failed:
            self._write(disk, 1)
        now_s = self.now_s()
        for ref in command.joining:
            if ref.host not in kept and ref.host not in disk.joins:
                speed = command.speed_mib_s or self.join_mib_s
                disk.joins[ref.host] = _Join(ref.host, now_s, disk.size_mib / speed)


@dataclass
class WriteRounds:
    """A host's write rounds: in each, every VM running there writes once to each of its
    replicated disks. A round looks only at the VMs it must watch (joins under way, a copy on a
    host that is gone), and at every one after a host is gone (or at every round, with a
    ledger that does not settle lazily); the others' writes are counted when asked for."""

    ledger: DiskLedger
    count: int = 0
    watched: set[str] = field(default_factory=set)
    epoch: int = 0

    def __post_init__(self) -> None:
        self.epoch = self.ledger.epoch

    def watch(self, name: str, quorums: FakeQuorums) -> None:
        """Look at VM ``name`` at each round while it needs it."""
        if quorums.watched:
            self.watched.add(name)
        else:
            self.watched.discard(name)

    def round(self, vms: Mapping[str, FakeQuorums]) -> list[str]:
        """One round of the host's VMs ``vms``: those looked at (their reports may differ)."""
        self.count += 1
        ledger = self.ledger
        if ledger.settles_lazily and ledger.epoch == self.epoch:
            names = sorted(self.watched)
        else:  # a host may be gone: every VM writes now, and its copies are looked at
            self.epoch = ledger.epoch
            names = list(vms)
        for name in names:
            quorums = vms[name]
            quorums.tick()
            self.watch(name, quorums)
        return names
