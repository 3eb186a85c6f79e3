"""The lease (pure arithmetic) and the fence watchdog, with time injected."""

from __future__ import annotations

import asyncio

import pytest

from common.messages import ObservedState, ResumeVm, StartVm
from common.resources import Resources
from hostagent.agent import Agent
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecEvent, ExecLog
from hostagent.lease import Lease
from tests.unit.hostagent.conftest import FakeClock, events, make_agent, make_spec, renew
from tests.waiting import wait_until

E = ExecEvent


def states(agent: Agent) -> dict[str, ObservedState]:
    return {vm.name: vm.state for vm in agent.inventory()}


def fenced(agent: Agent) -> bool:
    """Read through a call, so that mypy does not narrow the flag across awaits."""
    return agent.fenced


# --------------------------------------------------------------------------- Lease (pure)


def test_no_lease_is_expired() -> None:
    lease = Lease()
    assert lease.expired(0.0)
    assert not lease.ever_held


@pytest.mark.parametrize(
    ("now_s", "expired"),
    [(10.0, False), (13.99, False), (14.0, True), (20.0, True)],
    ids=["at-send", "just-before", "at-expiry", "long-after"],
)
def test_lease_runs_from_send_time(now_s: float, expired: bool) -> None:
    lease = Lease().renewed(sent_at_s=10.0, fence_after_s=4.0)
    assert lease.expired(now_s) is expired


def test_ack_of_an_older_heartbeat_never_extends_or_shrinks() -> None:
    lease = Lease().renewed(12.0, 4.0).renewed(10.0, 9.0)
    assert lease.expires_at_s == 16.0


def test_newest_ack_wins_even_with_a_shorter_fence() -> None:
    lease = Lease().renewed(10.0, 4.0).renewed(11.0, 0.8)
    assert lease.expires_at_s == pytest.approx(11.8)


# --------------------------------------------------------------------------- fencing


async def test_expiry_pauses_running_vms(agent: Agent, clock: FakeClock, execlog: ExecLog) -> None:
    await agent.execute(StartVm(vm=make_spec("vm-1"), generation=1))
    await agent.execute(StartVm(vm=make_spec("vm-2"), generation=7))
    clock.now_s += 3.9
    await agent.enforce_lease()
    assert set(states(agent).values()) == {ObservedState.RUNNING}
    assert not fenced(agent)
    clock.now_s += 0.1
    await agent.enforce_lease()
    assert states(agent) == {"vm-1": ObservedState.PAUSED, "vm-2": ObservedState.PAUSED}
    assert fenced(agent)
    assert {(vm.name, vm.generation) for vm in agent.inventory()} == {("vm-1", 1), ("vm-2", 7)}
    assert events(execlog)[-2:] == [("vm-1", 1, E.PAUSE), ("vm-2", 7, E.PAUSE)]
    await agent.enforce_lease()  # paused once, not again
    assert len(events(execlog)) == 6


async def test_ack_clears_fenced_but_does_not_resume(agent: Agent, clock: FakeClock) -> None:
    await agent.execute(StartVm(vm=make_spec(), generation=1))
    clock.now_s += 5
    await agent.enforce_lease()
    assert fenced(agent)
    agent.changed.clear()
    renew(agent, clock)
    assert not fenced(agent)
    assert agent.changed.is_set()
    await agent.enforce_lease()
    assert states(agent) == {"vm-1": ObservedState.PAUSED}
    await agent.execute(ResumeVm(name="vm-1", generation=1))
    assert states(agent) == {"vm-1": ObservedState.RUNNING}


async def test_late_ack_does_not_unfence(agent: Agent, clock: FakeClock) -> None:
    sent_at_s = clock.now_s + 1
    clock.now_s += 6
    await agent.enforce_lease()
    renew(agent, clock, sent_at_s=sent_at_s)  # answers a heartbeat sent 5 s ago: run out
    assert fenced(agent)


async def test_resume_is_refused_without_a_lease(agent: Agent, clock: FakeClock) -> None:
    await agent.execute(StartVm(vm=make_spec(), generation=1))
    clock.now_s += 5
    await agent.enforce_lease()
    await agent.execute(ResumeVm(name="vm-1", generation=1))
    assert states(agent) == {"vm-1": ObservedState.PAUSED}


async def test_vm_is_not_started_without_a_lease(
    agent: Agent, clock: FakeClock, execlog: ExecLog
) -> None:
    """A start delivered late (after a partition) may run elsewhere already: it must not
    execute here even for a moment; the scheduler resends it while it is still due."""
    clock.now_s += 5
    await agent.execute(StartVm(vm=make_spec(), generation=1))
    assert states(agent) == {}
    assert events(execlog) == []
    renew(agent, clock)
    await agent.execute(StartVm(vm=make_spec(), generation=1))
    assert states(agent) == {"vm-1": ObservedState.RUNNING}


async def test_fresh_agent_without_vms_is_not_fenced(
    driver: FakeDriver, execlog: ExecLog, clock: FakeClock
) -> None:
    agent = make_agent(driver, execlog, clock, leased=False)
    await agent.enforce_lease()
    assert not fenced(agent)


async def test_vm_paused_while_starting_is_not_reported_running(
    execlog: ExecLog, clock: FakeClock
) -> None:
    driver = FakeDriver(Resources(4000, 8192), start_delay_s=0.05)
    agent = make_agent(driver, execlog, clock)
    task = asyncio.create_task(agent.execute(StartVm(vm=make_spec(), generation=1)))
    await wait_until(lambda: states(agent) == {"vm-1": ObservedState.STARTING}, timeout_s=1)
    clock.now_s += 5
    await agent.enforce_lease()
    await task
    assert states(agent) == {"vm-1": ObservedState.PAUSED}
    assert [event for _, _, event in events(execlog)] == [E.START, E.PAUSE]
