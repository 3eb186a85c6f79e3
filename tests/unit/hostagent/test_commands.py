"""Command idempotency by (vm name, generation), run against the FakeDriver."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from common.messages import DeleteVm, ObservedState, ResumeVm, StartVm, StopVm
from common.resources import Resources
from hostagent.agent import Agent
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecEvent, ExecLog
from tests.unit.hostagent.conftest import FakeClock, events, make_agent, make_spec
from tests.waiting import wait_until

E = ExecEvent


def held(agent: Agent) -> dict[str, tuple[int, ObservedState]]:
    return {vm.name: (vm.generation, vm.state) for vm in agent.inventory()}


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def start(name: str = "vm-1", generation: int = 1, *, mem_mib: int = 1024) -> StartVm:
    return StartVm(vm=make_spec(name, mem_mib=mem_mib), generation=generation)


async def test_start_runs_and_logs(agent: Agent, execlog: ExecLog) -> None:
    await agent.execute(start())
    assert held(agent) == {"vm-1": (1, ObservedState.RUNNING)}
    assert events(execlog) == [("vm-1", 1, E.START), ("vm-1", 1, E.RUNNING)]
    assert agent.changed.is_set()


@pytest.mark.parametrize(
    "state", [ObservedState.RUNNING, ObservedState.PAUSED], ids=["running", "paused"]
)
async def test_same_generation_is_a_noop(
    agent: Agent, execlog: ExecLog, state: ObservedState
) -> None:
    await agent.execute(start())
    if state is ObservedState.PAUSED:
        await agent.driver.pause("vm-1")
    before = events(execlog)
    await agent.execute(start())
    assert held(agent) == {"vm-1": (1, state)}
    assert events(execlog) == before


async def test_lower_generation_is_replaced(agent: Agent, execlog: ExecLog) -> None:
    await agent.execute(start(generation=1))
    await agent.execute(start(generation=2))
    assert held(agent) == {"vm-1": (2, ObservedState.RUNNING)}
    assert events(execlog)[2:] == [
        ("vm-1", 1, E.DESTROY),
        ("vm-1", 2, E.START),
        ("vm-1", 2, E.RUNNING),
    ]


async def test_stale_start_is_ignored(agent: Agent) -> None:
    await agent.execute(start(generation=5))
    await agent.execute(start(generation=4))
    assert held(agent) == {"vm-1": (5, ObservedState.RUNNING)}


@pytest.mark.parametrize(
    ("command", "gone"),
    [
        (StopVm(name="vm-1", generation=2), True),
        (StopVm(name="vm-1", generation=3), True),
        (StopVm(name="vm-1", generation=1), False),
        (DeleteVm(name="vm-1", generation=2), True),
        (DeleteVm(name="vm-1", generation=9), True),
        (DeleteVm(name="vm-1", generation=1), False),
    ],
    ids=["stop-same", "stop-newer", "stop-stale", "delete-same", "delete-newer", "delete-stale"],
)
async def test_stop_and_delete_respect_generation(
    agent: Agent, command: StopVm | DeleteVm, gone: bool
) -> None:
    await agent.execute(start(generation=2))
    await agent.execute(command)
    assert held(agent) == ({} if gone else {"vm-1": (2, ObservedState.RUNNING)})


async def test_stop_and_delete_log_their_event(agent: Agent, execlog: ExecLog) -> None:
    await agent.execute(start("vm-1"))
    await agent.execute(start("vm-2"))
    await agent.execute(StopVm(name="vm-1", generation=1))
    await agent.execute(DeleteVm(name="vm-2", generation=1))
    await agent.execute(DeleteVm(name="vm-3", generation=1))  # unknown: nothing
    assert events(execlog)[4:] == [("vm-1", 1, E.STOP), ("vm-2", 1, E.DESTROY)]


@pytest.mark.parametrize(
    ("generation", "resumed"), [(3, True), (2, False), (4, False)], ids=["exact", "older", "newer"]
)
async def test_resume_only_at_exact_generation(
    agent: Agent, generation: int, resumed: bool
) -> None:
    await agent.execute(start(generation=3))
    await agent.driver.pause("vm-1")
    await agent.execute(ResumeVm(name="vm-1", generation=generation))
    expected = ObservedState.RUNNING if resumed else ObservedState.PAUSED
    assert held(agent) == {"vm-1": (3, expected)}


async def test_resume_of_running_vm_is_a_noop(agent: Agent, execlog: ExecLog) -> None:
    await agent.execute(start())
    await agent.execute(ResumeVm(name="vm-1", generation=1))
    assert events(execlog) == [("vm-1", 1, E.START), ("vm-1", 1, E.RUNNING)]


async def test_failed_start_is_reported_until_cleared(execlog: ExecLog, clock: FakeClock) -> None:
    agent = make_agent(FakeDriver(Resources(4000, 2048)), execlog, clock)
    await agent.execute(start(mem_mib=4096))
    [vm] = agent.inventory()
    assert (vm.state, vm.generation, vm.retryable) == (ObservedState.FAILED, 1, True)
    assert "insufficient memory on host: need 4096 MiB, free 2048" in vm.reason
    assert events(execlog) == [("vm-1", 1, E.START), ("vm-1", 1, E.FAIL)]
    await agent.execute(start(mem_mib=4096))  # same generation: still failed, not retried
    assert held(agent) == {"vm-1": (1, ObservedState.FAILED)}
    await agent.execute(start(generation=2, mem_mib=1024))  # higher generation replaces it
    assert held(agent) == {"vm-1": (2, ObservedState.RUNNING)}
    await agent.execute(start("vm-2", mem_mib=4096))
    await agent.execute(DeleteVm(name="vm-2", generation=1))
    assert held(agent) == {"vm-1": (2, ObservedState.RUNNING)}


async def test_commands_for_one_vm_run_in_order(execlog: ExecLog, clock: FakeClock) -> None:
    driver = FakeDriver(Resources(4000, 8192), start_delay_s=0.05)
    agent = make_agent(driver, execlog, clock)
    runner = asyncio.create_task(agent.operations.run())
    agent.submit([start("vm-1"), start("vm-2"), DeleteVm(name="vm-1", generation=1)])
    agent.submit([start("vm-1", 2)])
    await wait_until(agent.idle, timeout_s=2)
    await stop(runner)
    assert held(agent) == {"vm-1": (2, ObservedState.RUNNING), "vm-2": (1, ObservedState.RUNNING)}
    vm1 = [(gen, event) for vm, gen, event in events(execlog) if vm == "vm-1"]
    assert vm1 == [(1, E.START), (1, E.RUNNING), (1, E.DESTROY), (2, E.START), (2, E.RUNNING)]


async def test_different_vms_start_concurrently(execlog: ExecLog, clock: FakeClock) -> None:
    driver = FakeDriver(Resources(4000, 8192), start_delay_s=0.3)
    agent = make_agent(driver, execlog, clock)
    runner = asyncio.create_task(agent.operations.run())
    agent.submit([start("vm-1"), start("vm-2")])
    both_starting = {"vm-1": (1, ObservedState.STARTING), "vm-2": (1, ObservedState.STARTING)}
    await wait_until(lambda: held(agent) == both_starting, timeout_s=1)
    await stop(runner)
