"""Reads see the last committed records, never a step whose commit has not finished."""

from __future__ import annotations

from common.ids import HostId, VmName
from common.messages import VmState
from scheduler.shell.readview import ReadView, snapshot
from tests.unit.scheduler.corekit import CoreKit


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
