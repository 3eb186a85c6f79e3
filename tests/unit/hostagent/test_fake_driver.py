from __future__ import annotations

import asyncio

import pytest

from common.errors import DriverError
from common.messages import ObservedState
from common.resources import Resources
from hostagent.drivers.fake import FakeDriver
from tests.unit.hostagent.conftest import make_spec
from tests.waiting import wait_until


def states(driver: FakeDriver) -> dict[str, ObservedState]:
    return {vm.name: vm.state for vm in driver.inventory()}


async def test_start_reports_running_with_generation() -> None:
    driver = FakeDriver(Resources(4000, 8192))
    await driver.start(make_spec("vm-1"), 3)
    [vm] = driver.inventory()
    assert (vm.name, vm.generation, vm.state) == ("vm-1", 3, ObservedState.RUNNING)
    assert (vm.cpu_milli, vm.mem_mib) == (1000, 1024)


async def test_refuses_memory_that_does_not_fit() -> None:
    driver = FakeDriver(Resources(8000, 2048))
    await driver.start(make_spec("vm-1", mem_mib=1536), 1)
    with pytest.raises(DriverError, match="insufficient memory on host: need 1024 MiB, free 512"):
        await driver.start(make_spec("vm-2", mem_mib=1024), 1)
    assert set(states(driver)) == {"vm-1"}


async def test_refusal_is_retryable() -> None:
    driver = FakeDriver(Resources(1000, 1024))
    with pytest.raises(DriverError) as caught:
        await driver.start(make_spec(mem_mib=2048), 1)
    assert caught.value.retryable is True


async def test_paused_vms_still_count() -> None:
    driver = FakeDriver(Resources(8000, 2048))
    await driver.start(make_spec("vm-1", mem_mib=2048), 1)
    await driver.pause("vm-1")
    with pytest.raises(DriverError, match="insufficient memory"):
        await driver.start(make_spec("vm-2", mem_mib=1), 1)
    assert driver.allocated() == Resources(1000, 2048)


@pytest.mark.parametrize(
    ("overcommit", "fits"),
    [(1.0, False), (2.0, True)],
    ids=["no-overcommit", "overcommit-2x"],
)
async def test_cpu_is_overcommitted_up_to_the_ratio(overcommit: float, fits: bool) -> None:
    driver = FakeDriver(Resources(2000, 8192), cpu_overcommit=overcommit)
    await driver.start(make_spec("vm-1", cpu_milli=2000), 1)
    if fits:
        await driver.start(make_spec("vm-2", cpu_milli=2000), 1)
    else:
        with pytest.raises(DriverError, match="insufficient cpu"):
            await driver.start(make_spec("vm-2", cpu_milli=2000), 1)


async def test_memory_is_never_overcommitted() -> None:
    driver = FakeDriver(Resources(2000, 1024), cpu_overcommit=4.0)
    await driver.start(make_spec("vm-1", mem_mib=1024), 1)
    with pytest.raises(DriverError, match="insufficient memory"):
        await driver.start(make_spec("vm-2", mem_mib=1), 1)


async def test_stop_and_destroy_release_capacity() -> None:
    driver = FakeDriver(Resources(2000, 2048))
    await driver.start(make_spec("vm-1", mem_mib=2048), 1)
    await driver.stop("vm-1")
    await driver.start(make_spec("vm-2", mem_mib=2048), 1)
    await driver.destroy("vm-2")
    await driver.destroy("vm-2")  # idempotent
    assert driver.inventory() == []
    assert driver.allocated() == Resources(0, 0)


async def test_start_delay_shows_starting() -> None:
    driver = FakeDriver(Resources(4000, 8192), start_delay_s=0.2)
    task = asyncio.create_task(driver.start(make_spec("vm-1"), 1))
    await wait_until(lambda: states(driver).get("vm-1") is ObservedState.STARTING, timeout_s=1)
    await task
    assert states(driver) == {"vm-1": ObservedState.RUNNING}


async def test_paused_while_starting_stays_paused() -> None:
    driver = FakeDriver(Resources(4000, 8192), start_delay_s=0.05)
    task = asyncio.create_task(driver.start(make_spec("vm-1"), 1))
    await wait_until(lambda: "vm-1" in states(driver), timeout_s=1)
    await driver.pause("vm-1")
    await task
    assert states(driver) == {"vm-1": ObservedState.PAUSED}
    await driver.resume("vm-1")
    assert states(driver) == {"vm-1": ObservedState.RUNNING}


async def test_duplicate_name_is_refused() -> None:
    driver = FakeDriver(Resources(4000, 8192))
    await driver.start(make_spec("vm-1"), 1)
    with pytest.raises(DriverError, match="already exists") as caught:
        await driver.start(make_spec("vm-1"), 2)
    assert caught.value.retryable is False


async def test_pause_unknown_vm_raises() -> None:
    with pytest.raises(DriverError, match="no vm"):
        await FakeDriver(Resources(1000, 1024)).pause("ghost")
