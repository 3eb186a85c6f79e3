"""What reads see: the cluster as last committed, never a step whose commit has not finished.

The core changes its records in place, and its next step runs while the last one commits; so
reads (``ReadApi``, metrics, usage, the gallery's upload check) are served from a copy of their
own. Copying the whole state per step would cost too much at 100,000 VMs: each step's changed
records are copied once (``snapshot``, right after the step) and put into the view once their
commit is done (``apply``). The hosts' runtimes (liveness, fencing) are volatile, never stored:
the view reads the core's own.

A VM record as committed and unchanged since is the core's own object, not a copy: the core
gives the view a copy of it before it changes it (``ClusterState.before_change``), and once a
change is committed the view takes the core's record again if it has not changed since. So a
read that keeps a record across an ``await`` may see it change: reads answer at once.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass

from msgspec.structs import replace

from scheduler.core.contract import StepResult
from scheduler.shell.store import Loaded, SqliteStore
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, VmRecord
from scheduler.state.storage import ImageRecord, VnetRecord


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Copies of one step's changed records."""

    vms: list[VmRecord]
    hosts: list[HostRecord]
    images: list[ImageRecord]
    vnets: list[VnetRecord]


def snapshot(result: StepResult) -> Snapshot:
    return Snapshot(
        vms=[replace(r) for r in result.vms],
        hosts=[replace(h) for h in result.hosts],
        images=[replace(i) for i in result.images],
        vnets=[replace(v) for v in result.vnets],
    )


def unchanged(result: StepResult) -> bool:
    """The step changed no record: reads have nothing new to see from it."""
    return not (
        result.vms
        or result.hosts
        or result.images
        or result.replies
        or result.vnets
        or result.counters is not None
    )


class ReadView:
    def __init__(self, live: ClusterState) -> None:
        """Start from a copy of ``live`` (as loaded: all of it is committed)."""
        self.live = live
        self.state = live.read_copy()

    def apply(self, committed: Snapshot) -> None:
        """A step's records are committed: reads see them from now on."""
        state = self.state
        for vnet in committed.vnets:
            state.put_vnet(vnet)
        live = self.live.vms
        for record in committed.vms:
            state.put_vm(record)
            if live.get(record.name) == record:  # unchanged since: shared until it changes
                state.vms[record.name] = live[record.name]
        for host in committed.hosts:
            state.hosts[host.host_id] = host
        for image in committed.images:
            state.images[image.name] = image


def indexed(loaded: Loaded) -> tuple[ClusterState, ReadView]:
    """The state as stored, indexed, and the read view's copy of it."""
    state = ClusterState.from_records(
        loaded.vms, loaded.hosts, loaded.replies, loaded.images, loaded.vnets, loaded.counters
    )
    return state, ReadView(state)


async def load(store: SqliteStore) -> tuple[Loaded, ClusterState, ReadView]:
    """A term's start: the records as stored, indexed, and the read view.

    Decoding and indexing run off the event loop, which keeps the leader lease meanwhile (at
    100,000 VMs they take longer than the lease: it was lost once, and the load began again).
    The cyclic garbage collector is off meanwhile: it is started by counts of allocations, and
    each of its runs walked every object decoded so far, again and again (half the decoding
    time); none of them is garbage, and none forms a cycle. Once loaded, they are frozen
    (``gc.freeze``): every full collection of the term would walk them all again (0.15 s each
    at 100,000 VMs, the first steps after a restart paid several). ``thaw`` at the term's end.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        loaded = await store.load()
        state, view = await asyncio.to_thread(indexed, loaded)
    finally:
        if collecting:
            gc.enable()
    gc.freeze()
    return loaded, state, view


def thaw() -> None:
    """A term's end: what it loaded may be collected again (its records may hang from reference
    cycles, which only the collector frees)."""
    gc.unfreeze()
