"""Reads see the last committed records, never a step whose commit has not finished."""

from __future__ import annotations

import pytest

from common.ids import HostId, VmName
from common.messages import VmRef, VmState
from common.network_messages import NicRequest
from scheduler.core.contract import Op
from scheduler.shell.readview import ReadView, snapshot
from scheduler.state.copying import copied
from tests.unit.scheduler.corekit import CoreKit
from tests.unit.scheduler.replkit import ReplicaKit


def test_reads_see_a_step_only_once_it_is_applied_after_its_commit() -> None:
    kit = CoreKit()
    kit.heartbeat("h1")
    view = ReadView(kit.state)
    kit.create("a")
    name = VmName("a")
    assert name not in view.state.vms  # created, not yet committed
    copies = snapshot(kit.result)
    kit.heartbeat("h1", kit.running_on("h1"))
    assert kit.vm(name).state is VmState.RUNNING
    view.apply(copies)
    seen = view.state.vms[name]
    assert seen.state is VmState.SCHEDULED, "the view holds what was committed, not later changes"
    assert view.state.allocated[HostId("h1")] == seen.resources
    view.apply(snapshot(kit.result))
    assert view.state.vms[name].state is VmState.RUNNING
    assert view.state.runtimes is kit.state.runtimes  # liveness is volatile: read live


def test_reads_share_the_core_s_records_until_it_changes_one_and_never_see_the_change_early() -> (
    None
):
    """The view holds the core's own VM records while they are as committed (not a second
    copy of each), and the core copies one for it before changing it: a change is seen only
    once its commit is applied, however many steps change the record meanwhile."""
    kit = CoreKit()
    kit.heartbeat("h1")
    kit.create("a")
    view = ReadView(kit.state)  # all of it committed
    name = VmName("a")
    assert view.state.vms[name] is kit.vm(name)
    kit.heartbeat("h1", kit.running_on("h1"))
    running = snapshot(kit.result)
    kit.mutate(Op.STOP, VmRef(name="a"))
    stopping = snapshot(kit.result)
    assert kit.vm(name).state is VmState.STOPPING
    assert view.state.vms[name].state is VmState.SCHEDULED, "a change seen before its commit"
    view.apply(running)
    assert view.state.vms[name].state is VmState.RUNNING, "a later step's change seen"
    view.apply(stopping)
    assert view.state.vms[name] is kit.vm(name), "committed and unchanged since: shared again"
    kit.heartbeat("h1", [])  # it stopped
    assert kit.vm(name).state is VmState.STOPPED
    assert view.state.vms[name].state is VmState.STOPPING, "a change seen before its commit"
    view.state.check_invariants()


def test_a_view_has_indexes_of_its_own_that_the_core_s_later_steps_leave_alone() -> None:
    kit = ReplicaKit()
    for host, domain in (("h1", "fd-a"), ("h2", "fd-b"), ("h3", "fd-c")):
        kit.add_host(host, domain)
    kit.vnet("front", "10.1.0.0/24")
    for name in ("a", "b"):
        kit.create(name, nics=[NicRequest(vnet="front")], availability_set="set1")
    kit.beat_all("h1", "h2", "h3")
    view = ReadView(kit.state)
    view.state.check_invariants()  # the copied indexes agree with the copied records
    assert view.state.disks.same_as(kit.state.disks) == []
    assert view.state.net.same_as(kit.state.net) == []

    kit.create("c", nics=[NicRequest(vnet="front")], availability_set="set1")
    kit.mutate(Op.DELETE, VmRef(name="a"))
    kit.beat_all("h1", "h2", "h3")
    assert kit.state.net.ipams["front"].used == 2
    view.state.check_invariants()  # still: the core changed only its own records and indexes
    assert view.state.net.ipams["front"].used == 2
    assert VmName("c") not in view.state.vms
    assert view.state.by_set["set1"] == {VmName("a"), VmName("b")}


def test_an_index_member_of_an_unknown_kind_is_refused_not_shared() -> None:
    class Tally:
        def __init__(self) -> None:
            self.count = 0

    with pytest.raises(TypeError, match="Tally"):
        copied({"h1": Tally()})
    with pytest.raises(TypeError, match="Tally"):
        copied({"h1": {Tally()}})
