"""The agent's side of disks and capture: what it asks of its driver."""

from __future__ import annotations

from common.messages import CaptureDisk, DeleteVm, StartVm, StopVm
from hostagent.agent import Agent
from hostagent.drivers.fake import FakeDriver
from tests.unit.hostagent.conftest import make_spec


async def test_delete_of_a_vm_not_running_here_removes_what_is_kept_for_it(
    agent: Agent, driver: FakeDriver
) -> None:
    forgotten: list[tuple[str, int]] = []

    async def forget(name: str, generation: int) -> None:
        forgotten.append((name, generation))

    driver.forget = forget  # type: ignore[method-assign]
    await agent.execute(StartVm(vm=make_spec(), generation=1))
    await agent.execute(StopVm(name="vm-1", generation=1))
    assert forgotten == [], "a stop keeps the disks"
    await agent.execute(DeleteVm(name="vm-1", generation=2))
    assert forgotten == [("vm-1", 2)]


async def test_capture_goes_to_the_capturer_with_whether_the_vm_runs(agent: Agent) -> None:
    seen: list[tuple[str, bool]] = []

    async def capture(command: CaptureDisk, running: bool) -> None:
        seen.append((command.image, running))

    command = CaptureDisk(name="vm-1", generation=2, disk_id="vm-1-g1-os1", image="golden")
    await agent.execute(command)  # no capturer: logged, nothing else
    agent.capture = capture
    await agent.execute(command)
    await agent.execute(StartVm(vm=make_spec(), generation=3))
    await agent.execute(command)
    assert seen == [("golden", False), ("golden", True)]
