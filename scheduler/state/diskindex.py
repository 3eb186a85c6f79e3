"""The index of disks on hosts, kept from the VM records as they change. Pure.

- per host, the replicas it must hold (disk id -> VM): its ``ConfigureReplicas`` is computed
  from this without looking at every VM;
- per host, the space its disks take: every copy of a replicated disk and every host-local
  disk made there or to be made there (its VM is placed there), each at its full size
  (placement filters on it);
- which hosts' replica sets may have changed (``dirty_hosts``): every host holding a copy of
  a disk whose copies changed (a copy's ``fill_from`` names another copy); and, apart, the
  copies of which only whether they were made changed (``made_changed``: no spec changes);
- the VMs with replicated disks, by the fewest live copies one of their disks has
  (``by_copies``): rebuilds look only at those below the wanted count.

A VM record adds a ``DiskShare`` (what it holds); ``update`` takes the old share out and puts
the new one in. A deleted VM holds nothing: its copies drop out of their hosts' sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.ids import HostId, VmName
from common.messages import DiskStorage, VmState
from scheduler.state.model import VmRecord
from scheduler.state.storage import CopyState

Copies = tuple[tuple[HostId, CopyState, bool], ...]
"""Each copy: its host, its state, and whether it was made."""
_MAKING = frozenset({CopyState.FILLING, CopyState.JOINING})


@dataclass(frozen=True, slots=True)
class DiskShare:
    """What one VM record holds on hosts' disks."""

    replicated: tuple[tuple[str, int, Copies], ...]
    """Per replicated disk: its id, the space a copy takes, and its copies."""
    local: tuple[tuple[HostId, int], ...]
    """Host-local disks, with their size, on the host they were made on, or for those not made
    yet, on the host their VM holds capacity on."""

    @property
    def fewest(self) -> int | None:
        """The fewest live (not lost) copies of its replicated disks; None without any (counted
        only when the share changed: a record's change mostly leaves it as it was)."""
        if not self.replicated:
            return None
        return min(
            sum(state is not CopyState.LOST for _, state, _ in copies)
            for _, _, copies in self.replicated
        )

    @property
    def fewest_current(self) -> int | None:
        """The fewest current copies of its replicated disks; None without any."""
        if not self.replicated:
            return None
        return min(
            sum(state is CopyState.CURRENT for _, state, _ in copies)
            for _, _, copies in self.replicated
        )


def _placed_on(record: VmRecord) -> HostId | None:
    """Where a host-local disk not made yet takes room: the host its VM holds capacity on (it
    is made there when the VM starts; counted from the placement on, or creates in a row
    would all fit a nearly full disk)."""
    return record.host if record.holds_capacity else None


def share_of(record: VmRecord | None) -> DiskShare | None:
    """Called before and after every change of a VM record: one pass over its disks, and
    none at all for a VM whose disks were never made (a pending VM's)."""
    if record is None or record.state is VmState.DELETED:
        return None
    replicated: list[tuple[str, int, Copies]] = []
    local: list[tuple[HostId, int]] = []
    placed = _placed_on(record)
    for d in record.disks:  # one pass: a restart takes the share of every VM
        if d.storage is DiskStorage.REPLICATED:
            copies = tuple((c.host, c.state, c.made) for c in d.copies)
            replicated.append((d.disk_id, d.charged_mib, copies))
            host = d.host  # lives in its copies
        else:
            host = d.host if d.host is not None else placed
        if host is not None:
            local.append((host, d.charged_mib))
    if not replicated and not local:
        return None
    return DiskShare(tuple(replicated), tuple(local))


@dataclass(slots=True)
class DiskIndex:
    held: dict[HostId, dict[str, VmName]] = field(default_factory=dict)
    """Per host, the copies it must hold: disk id -> VM."""
    used_mib: dict[HostId, int] = field(default_factory=dict)
    dirty_hosts: set[HostId] = field(default_factory=set)
    """Hosts whose replica set may have changed since it was last computed."""
    dirty_disks: dict[HostId, set[str]] = field(default_factory=dict)
    """Of those, the disks whose copies changed (what their sets need computed again)."""
    made_changed: dict[HostId, dict[str, bool]] = field(default_factory=dict)
    """Per host, copies of which only whether they were made changed: disk id -> made."""
    by_copies: dict[int, dict[VmName, None]] = field(default_factory=dict)
    """VMs with replicated disks by the fewest live copies of one of their disks."""
    by_current: dict[int, dict[VmName, None]] = field(default_factory=dict)
    """The same by the fewest current copies (below the wanted count: degraded)."""
    making: dict[HostId, int] = field(default_factory=dict)
    """Per host, the copies being made there (filling or joining): rebuilds are limited."""
    copies_changed: set[HostId] = field(default_factory=set)
    """Hosts whose used space changed (their placement view is stale)."""

    def update(self, name: VmName, old: DiskShare | None, new: DiskShare | None) -> None:
        """Take ``old`` out and put ``new`` in: only the disks that differ (a copy made, or a
        copy's state changed, touches that disk alone)."""
        if old == new:
            return
        before = {d[0]: d for d in old.replicated} if old is not None else {}
        after = {d[0]: d for d in new.replicated} if new is not None else {}
        refile = False
        for disk_id in before.keys() | after.keys():
            was, now = before.get(disk_id), after.get(disk_id)
            if was != now:
                refile = self._update_disk(name, disk_id, was, now) or refile
        local_was = old.local if old is not None else ()
        local_now = new.local if new is not None else ()
        if local_was != local_now:
            for host, mib in local_was:
                self._use(host, -mib)
            for host, mib in local_now:
                self._use(host, mib)
        if refile:
            self._refile(name, old, new)

    def add(self, name: VmName, record: VmRecord) -> None:
        """``update(name, None, share_of(record))`` for a VM not indexed yet: quicker for one
        without replicated disks (a restart adds every VM)."""
        disks = record.disks
        if not disks or record.state is VmState.DELETED:
            return
        if any(d.storage is DiskStorage.REPLICATED for d in disks):
            self.update(name, None, share_of(record))
            return
        used = self.used_mib
        placed = _placed_on(record)
        for disk in disks:
            host = disk.host if disk.host is not None else placed
            if host is not None:
                used[host] = used.get(host, 0) + disk.charged_mib
                self.copies_changed.add(host)
                if not used[host]:
                    del used[host]

    def _update_disk(
        self,
        name: VmName,
        disk_id: str,
        was: tuple[str, int, Copies] | None,
        now: tuple[str, int, Copies] | None,
    ) -> bool:
        """The disk's copies changed from ``was`` to ``now``; False when only whether copies
        were made did (the counts of live and current copies are as they were)."""
        if was is not None and now is not None and _same_homes(was, now):
            for (host, then, _), (_, state, _) in zip(was[2], now[2], strict=True):
                self._making(host, (state in _MAKING) - (then in _MAKING))
            if all(a[1] is b[1] for a, b in zip(was[2], now[2], strict=True)):
                # only whether copies were made changed: no spec changes (a copy's source to
                # fill from is chosen by the others' states, which are the same)
                for before, after in zip(was[2], now[2], strict=True):
                    if before != after:
                        self.made_changed.setdefault(after[0], {})[disk_id] = after[2]
                return False
        else:
            if was is not None:
                self._apply_disk(name, was, -1)
            if now is not None:
                self._apply_disk(name, now, +1)
        for copies in (was[2] if was else (), now[2] if now else ()):
            for host, _, _ in copies:
                self._dirty(host, disk_id)
        return True

    def _dirty(self, host: HostId, disk_id: str) -> None:
        """``host``'s replica set may have changed through the copies of ``disk_id``."""
        self.dirty_hosts.add(host)
        self.dirty_disks.setdefault(host, set()).add(disk_id)

    def _apply_disk(self, name: VmName, disk: tuple[str, int, Copies], sign: int) -> None:
        disk_id, mib, copies = disk
        for host, state, _ in copies:
            self._use(host, sign * mib)
            if state in _MAKING:
                self._making(host, sign)
            held = self.held.setdefault(host, {})
            if sign > 0:
                held[disk_id] = name
            else:
                held.pop(disk_id, None)
                if not held:
                    del self.held[host]

    def _making(self, host: HostId, change: int) -> None:
        if not change:
            return
        made = self.making.get(host, 0) + change
        if made:
            self.making[host] = made
        else:
            del self.making[host]

    def _use(self, host: HostId, mib: int) -> None:
        used = self.used_mib.get(host, 0) + mib
        if used:
            self.used_mib[host] = used
        else:
            self.used_mib.pop(host, None)
        self.copies_changed.add(host)

    def _refile(self, name: VmName, old: DiskShare | None, new: DiskShare | None) -> None:
        _move(
            self.by_copies,
            name,
            old.fewest if old is not None else None,
            new.fewest if new is not None else None,
        )
        _move(
            self.by_current,
            name,
            old.fewest_current if old is not None else None,
            new.fewest_current if new is not None else None,
        )

    def replicas_on(self, host: HostId) -> int:
        return len(self.held.get(host, ()))

    def short_of(self, wanted: int) -> list[VmName]:
        """The VMs one of whose replicated disks has fewer than ``wanted`` live copies."""
        return [
            name
            for count in sorted(self.by_copies)
            if count < wanted
            for name in self.by_copies[count]
        ]

    def same_as(self, other: DiskIndex) -> list[str]:
        """What differs from ``other`` (an index built afresh): [] when nothing does."""
        problems = []
        for what in ("held", "used_mib", "by_copies", "by_current", "making"):
            if getattr(self, what) != getattr(other, what):
                problems.append(what)
        return problems


def _same_homes(was: tuple[str, int, Copies], now: tuple[str, int, Copies]) -> bool:
    """The disk's copies are on the same hosts, at the same size (their state or whether they
    were made changed): the space they take and who holds them are as they were."""
    return was[1] == now[1] and [c[0] for c in was[2]] == [c[0] for c in now[2]]


def _move(
    buckets: dict[int, dict[VmName, None]], name: VmName, before: int | None, after: int | None
) -> None:
    if before == after:
        return
    if before is not None:
        bucket = buckets[before]
        bucket.pop(name, None)
        if not bucket:
            del buckets[before]
    if after is not None:
        buckets.setdefault(after, {})[name] = None
