"""Where the copies of a replicated disk go. Pure.

A copy goes to a host that is up, not cordoned, serves replicas, is in the VM's region, has
room for the copy at its full size, and lies in a fault domain no other copy of the disk is
in: two copies never share a fault domain, so one domain's failure takes at most one copy.
Among those, the host with the most free disk space wins (hosts that do not limit their
space first, then the fewest used), ties to the smallest host id; a second copy goes to the
best host of another domain, and so on.

``choose_copies`` is the specification: it looks at every host. ``CopyIndex`` answers the
same without that: it keeps the eligible hosts of each region and fault domain sorted by
preference, so a choice looks at the head of each domain's list (a few hosts skipped for
being avoided), and a reservation moves one host.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.ids import HostId
from scheduler.state.model import HostView

UNLIMITED = 2**62
"""The free space of a host that does not limit its disks (sorts before every other)."""

_Key = tuple[int, int, HostId]
"""``(-free MiB, used MiB, host id)``: the smaller, the better a home for a copy."""


def eligible(view: HostView) -> bool:
    """Whether ``view`` may take new copies at all (room aside)."""
    return view.up and not view.cordoned and view.serves_replicas


def free_mib(view: HostView) -> int:
    if view.disk_capacity_mib <= 0:
        return UNLIMITED
    return view.disk_capacity_mib - view.disk_used_mib


def _key(view: HostView) -> _Key:
    return (-free_mib(view), view.disk_used_mib, view.host_id)


@dataclass(frozen=True, slots=True)
class CopyRequest:
    """Copies wanted of one disk (or of a VM's disks, placed together)."""

    count: int
    disk_mib: int
    """The space each copy takes (all of a VM's disks placed together: their sum)."""
    region: str | None = None
    taken_domains: frozenset[str] = frozenset()
    """Fault domains that hold a copy already (or must not get one)."""
    avoid: frozenset[HostId] = frozenset()
    """Hosts that must not get one (e.g. they still hold an old copy of the disk)."""


def _fits(req: CopyRequest, view: HostView) -> bool:
    return (
        eligible(view)
        and (req.region is None or view.region == req.region)
        and view.fault_domain not in req.taken_domains
        and view.host_id not in req.avoid
        and view.has_disk_room(req.disk_mib)
    )


def choose_copies(req: CopyRequest, hosts: Iterable[HostView]) -> list[HostId] | None:
    """The hosts for ``req.count`` copies, best first; None when there are not enough."""
    best: dict[str, HostView] = {}
    for view in hosts:
        if _fits(req, view):
            current = best.get(view.fault_domain)
            if current is None or _key(view) < _key(current):
                best[view.fault_domain] = view
    if len(best) < req.count:
        return None
    chosen = sorted(best.values(), key=_key)[: req.count]
    return [view.host_id for view in chosen]


class CopyIndex:
    """The eligible hosts per region and fault domain, best home for a copy first."""

    def __init__(self, views: Iterable[HostView]) -> None:
        self._views: dict[HostId, HostView] = {}
        self._domains: dict[tuple[str, str], list[_Key]] = {}
        for view in views:
            self._views[view.host_id] = view
            if eligible(view):
                self._domains.setdefault((view.region, view.fault_domain), []).append(_key(view))
        for keys in self._domains.values():
            keys.sort()

    def update(self, view: HostView) -> None:
        """Put ``view`` in place of the host's old view (new hosts too)."""
        old = self._views.get(view.host_id)
        if old is not None and eligible(old):
            keys = self._domains[(old.region, old.fault_domain)]
            del keys[bisect_left(keys, _key(old))]
        self._views[view.host_id] = view
        if eligible(view):
            insort(self._domains.setdefault((view.region, view.fault_domain), []), _key(view))

    def reserve(self, host: HostId, disk_mib: int) -> None:
        """``disk_mib`` more is used on ``host`` (a copy placed there)."""
        self.update(self._views[host].with_reserved_disk(disk_mib))

    def same_as(self, other: CopyIndex) -> bool:
        """Whether both keep the same hosts in the same order (used by tests)."""
        mine = {key: keys for key, keys in self._domains.items() if keys}
        theirs = {key: keys for key, keys in other._domains.items() if keys}
        return mine == theirs and self._views == other._views

    def view(self, host: HostId) -> HostView:
        return self._views[host]

    def views(self) -> Sequence[HostView]:
        return sorted(self._views.values(), key=lambda view: view.host_id)

    def choose(self, req: CopyRequest) -> list[HostId] | None:
        """What ``choose_copies(req, self.views())`` answers."""
        heads: dict[str, HostView] = {}
        for (region, domain), keys in self._domains.items():
            if (req.region is not None and region != req.region) or domain in req.taken_domains:
                continue
            for key in keys:
                view = self._views[key[2]]
                if view.host_id in req.avoid:
                    continue
                head = heads.get(domain)
                if view.has_disk_room(req.disk_mib) and (head is None or _key(view) < _key(head)):
                    heads[domain] = view
                break  # the rest of the domain has no more room than this one
        if len(heads) < req.count:
            return None
        return [view.host_id for view in sorted(heads.values(), key=_key)[: req.count]]
