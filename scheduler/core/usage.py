"""Usage metering: from the VM event history, the hours each VM held capacity, and their price.

Pure: events, the window and the price table in; a ``UsageReport`` out.

A VM holds capacity from its placement (an event in state ``scheduled``, or any other state in
which a VM sits on a host) until the first event in a state that holds none: ``stopped``
(deallocated), ``deleted``, ``failed``, ``lost`` (its host was declared dead) or ``pending`` (it
was taken off its host to be placed again). Billing is per started **clock hour** (UTC): a VM
pays for each hour in which it held capacity at all, once, however often it was stopped,
started, moved or re-placed within that hour. So a VM re-placed after its host died is not
billed twice for the same hour, and a stopped (deallocated) VM pays nothing.

The window covers the clock hours that begin in ``[since, until)``; ``since`` is rounded down to
the start of its hour. Hour-aligned windows therefore partition usage exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from common.messages import VmEvent
from common.usage_messages import SizeUsage, UsageReport, VmUsage
from scheduler.state.model import ACTIVE_STATES

HOUR_S = 3600
UNKNOWN_SIZE = "unknown"
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
"""No window starts earlier (nothing was metered before; and year 1 has no hour before it)."""


@dataclass(frozen=True, slots=True)
class Held:
    """One period during which VM ``name`` (of ``size``) held capacity: [start_s, end_s)."""

    name: str
    size: str
    start_s: float
    end_s: float


def floor_hour(when: datetime) -> datetime:
    """The start of the clock hour (UTC) that contains ``when``."""
    stamp = when.timestamp()
    return datetime.fromtimestamp(stamp - stamp % HOUR_S, UTC)


def held_periods(
    events: Iterable[VmEvent], until_s: float, sizes: Mapping[str, str] | None = None
) -> list[Held]:
    """The periods each VM held capacity, from its events (duplicates and any order are fine:
    they are sorted by ``seq``). A VM still holding capacity at the end is held until
    ``until_s``. ``sizes`` names the size of VMs whose events predate the ``size`` field."""
    sizes = sizes or {}
    open_since: dict[str, tuple[float, str, str | None]] = {}
    periods: list[Held] = []
    seen: set[int] = set()
    for event in sorted(events, key=lambda e: e.seq):
        if event.seq in seen:
            continue
        seen.add(event.seq)
        at_s = event.time.timestamp()
        current = open_since.get(event.name)
        holds = event.state in ACTIVE_STATES and event.host is not None
        if current is not None and (not holds or current[2] != event.host):
            start_s, size, _ = open_since.pop(event.name)
            periods.append(Held(event.name, size, start_s, max(at_s, start_s)))
            current = None
        if holds and current is None:
            size = event.size or sizes.get(event.name, UNKNOWN_SIZE)
            open_since[event.name] = (at_s, size, event.host)
    for name, (start_s, size, _) in open_since.items():
        if until_s > start_s:
            periods.append(Held(name, size, start_s, until_s))
    return periods


def _hours(periods: list[tuple[float, float]]) -> tuple[int, float]:
    """(started clock hours, seconds held) of possibly overlapping periods."""
    ranges = sorted((int(s // HOUR_S), math.ceil(e / HOUR_S)) for s, e in periods if e > s)
    hours, last_end = 0, -1
    for first, end in ranges:
        first = max(first, last_end)
        if end > first:
            hours += end - first
            last_end = end
    held_s = sum(e - s for s, e in _merged(periods))
    return hours, held_s


def _merged(periods: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(p for p in periods if p[1] > p[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def usage_report(
    events: Iterable[VmEvent],
    *,
    since: datetime | None,
    until: datetime,
    prices: Mapping[str, float],
    sizes: Mapping[str, str] | None = None,
) -> UsageReport:
    """Usage in the window ``[floor_hour(since), until)``: per VM and size, and per size.

    ``until`` should not lie in the future (pass ``min(until, now)``): a VM still running is
    billed up to it. ``since=None`` means from the first event on.
    """
    events = list(events)
    until_s = until.timestamp()
    if since is None:
        since = min((e.time for e in events), default=until)
    if since >= until:  # e.g. a window in the future: until was clipped to now
        return UsageReport(since=since, until=since)
    since = floor_hour(max(EARLIEST, since))
    since_s = since.timestamp()
    by_vm: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for held in held_periods(events, until_s, sizes):
        start_s, end_s = max(held.start_s, since_s), min(held.end_s, until_s)
        if end_s > start_s:
            by_vm[(held.name, held.size)].append((start_s, end_s))
    vms = []
    for (name, size), periods in sorted(by_vm.items()):
        hours, held_s = _hours(periods)
        price = prices.get(size, 0.0)
        vms.append(
            VmUsage(
                name=name,
                size=size,
                held_s=round(held_s, 3),
                hours=hours,
                price_per_hour=price,
                cost=round(hours * price, 6),
            )
        )
    return UsageReport(
        since=since,
        until=until,
        vms=vms,
        sizes=_per_size(vms, prices),
        hours=sum(vm.hours for vm in vms),
        cost=round(sum(vm.cost for vm in vms), 6),
    )


def _per_size(vms: list[VmUsage], prices: Mapping[str, float]) -> list[SizeUsage]:
    grouped: dict[str, list[VmUsage]] = defaultdict(list)
    for vm in vms:
        grouped[vm.size].append(vm)
    return [
        SizeUsage(
            size=size,
            vms=len({vm.name for vm in members}),
            held_s=round(sum(vm.held_s for vm in members), 3),
            hours=sum(vm.hours for vm in members),
            price_per_hour=prices.get(size, 0.0),
            cost=round(sum(vm.cost for vm in members), 6),
        )
        for size, members in sorted(grouped.items())
    ]
