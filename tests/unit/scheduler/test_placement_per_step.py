"""A step places at most ``PLACED_PER_STEP`` VMs; the rest follow in the next steps, in order,
so a burst (a host's death, thousands of creates) never makes one long step."""

from __future__ import annotations

import pytest

from common.messages import CreateVm, StartVm, VmRef, VmState
from common.network_messages import NicRequest
from scheduler.core import vms
from scheduler.core.contract import Mutation, Op, Tick
from tests.unit.scheduler.corekit import CoreKit, commands

PER_STEP = 3


@pytest.fixture
def kit(monkeypatch: pytest.MonkeyPatch) -> CoreKit:
    monkeypatch.setattr(vms, "PLACED_PER_STEP", PER_STEP)
    kit = CoreKit()
    for host in ("h1", "h2"):
        kit.heartbeat(host, fault_domain=f"fd-{host}")
    return kit


def started(kit: CoreKit) -> list[str]:
    return [c.vm.name for c in commands(kit.actions) if isinstance(c, StartVm)]


def test_creates_beyond_a_steps_share_are_placed_in_the_next_steps_in_order(
    kit: CoreKit,
) -> None:
    names = [f"vm-{i}" for i in range(8)]
    kit.step(*(Mutation(Op.CREATE, CreateVm(name=n, size="Small"), i) for i, n in enumerate(names)))
    assert started(kit) == names[:3]
    assert {kit.vm(n).state for n in names[3:]} == {VmState.PENDING}
    kit.advance(0.1)
    assert started(kit) == names[3:6]
    kit.advance(0.1)
    assert started(kit) == names[6:]
    kit.advance(0.1)
    assert started(kit) == []
    assert all(kit.vm(n).host is not None for n in names)


def test_a_dead_hosts_vms_go_elsewhere_a_steps_share_at_a_time(kit: CoreKit) -> None:
    for i in range(8):
        kit.create(f"vm-{i}", "ExtraSmall")
    on_h1 = sorted(name for name, vm in kit.state.vms.items() if vm.host == "h1")
    assert len(on_h1) > PER_STEP
    kit.t += 3.0
    kit.heartbeat("h2", fault_domain="fd-h2")
    kit.advance(3.5)  # h1 silent past dead_after_s: its VMs are pending again
    moved = started(kit)
    assert len(moved) <= PER_STEP
    for _ in range(5):
        kit.heartbeat("h2", fault_domain="fd-h2")
        assert len(started(kit)) <= PER_STEP
        moved += started(kit)
        kit.advance(0.2)
        assert len(started(kit)) <= PER_STEP
        moved += started(kit)
    assert sorted(moved) == on_h1
    assert {kit.vm(name).host for name in on_h1} == {"h2"}


def test_a_vm_created_and_deleted_in_one_step_with_a_tick_is_not_placed(kit: CoreKit) -> None:
    """A starved scheduler takes many inputs in one step: here a create, the delete of the same
    VM (its freed address makes every pending VM worth trying again) and a tick. The deleted
    VM was still among the step's new pending ones: placing it raised, and the scheduler
    exited."""
    kit.vnet("front", "10.1.0.0/24")
    create = CreateVm(name="gone", size="Small", nics=[NicRequest(vnet="front")])
    kit.step(
        Mutation(Op.CREATE, create, 1),
        Mutation(Op.DELETE, VmRef(name="gone"), 2),
        Mutation(Op.CREATE, CreateVm(name="kept", size="Small"), 3),
        Tick(),
    )
    assert kit.vm("gone").state is VmState.DELETED
    assert started(kit) == ["kept"]
    kit.advance(0.1)
    assert kit.vm("gone").state is VmState.DELETED and kit.vm("gone").host is None
