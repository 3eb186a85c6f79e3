"""The fake driver's live migration: a simulator with the accounts and timing of the real one."""

from __future__ import annotations

import asyncio
import time

import pytest
from msgspec.structs import replace

from common.errors import DriverError
from common.messages import DiskKind, DiskSpec, ObservedState
from common.resources import ZERO, Resources
from hostagent.drivers.base import IncomingEndpoint, MigrationProgress
from hostagent.drivers.fake import FakeDriver, MigrationModel, migration_size_mib
from tests.unit.hostagent.conftest import make_spec
from tests.waiting import wait_until

TARGET = IncomingEndpoint("10.0.0.2", 49152, 49153)


class ManualClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def states(driver: FakeDriver) -> dict[str, ObservedState]:
    return {vm.name: vm.state for vm in driver.inventory()}


async def migrate(driver: FakeDriver, name: str = "vm-1", cap_mib_s: int = 0) -> None:
    await driver.migrate_out(name, TARGET, max_downtime_ms=100, max_bandwidth_mib_s=cap_mib_s)


def test_the_default_model_matches_qemu_under_tcg() -> None:
    """QEMU under TCG moved a 128 MiB guest between two processes in 0.6-0.7 s."""
    assert 0.6 <= MigrationModel().duration_s(128, MigrationModel().bandwidth_mib_s) <= 0.7


def test_what_a_migration_sends_is_memory_and_data_disks() -> None:
    disks = [
        DiskSpec(disk_id="os", kind=DiskKind.OS, image="tiny"),
        DiskSpec(disk_id="d1", kind=DiskKind.DATA, size_mib=2048),
    ]
    assert migration_size_mib(replace(make_spec(mem_mib=1024), disks=disks)) == 3072


async def test_an_incoming_vm_holds_its_resources_and_waits() -> None:
    driver = FakeDriver(Resources(4000, 2048))
    endpoint = await driver.prepare_incoming(make_spec("vm-1", mem_mib=1536), 7, "10.0.0.2")
    assert endpoint.address == "10.0.0.2"
    assert endpoint.migration_port != endpoint.nbd_port
    [vm] = driver.inventory()
    assert (vm.name, vm.generation, vm.state) == ("vm-1", 7, ObservedState.INCOMING)
    assert driver.allocated() == Resources(1000, 1536)
    with pytest.raises(DriverError, match="insufficient memory"):  # it counts
        await driver.start(make_spec("vm-2", mem_mib=1024), 1)
    await driver.pause("vm-1")  # an incoming VM does not execute: nothing to pause
    await driver.resume("vm-1")  # nor to resume: only finish_incoming lets it run
    assert states(driver) == {"vm-1": ObservedState.INCOMING}


async def test_prepare_again_returns_the_same_endpoint_and_others_get_their_own() -> None:
    driver = FakeDriver(Resources(4000, 8192))
    first = await driver.prepare_incoming(make_spec("vm-1"), 7, "10.0.0.2")
    assert await driver.prepare_incoming(make_spec("vm-1"), 7, "10.0.0.2") == first
    other = await driver.prepare_incoming(make_spec("vm-2"), 3, "10.0.0.2")
    assert {other.migration_port, other.nbd_port}.isdisjoint({first.migration_port, first.nbd_port})
    with pytest.raises(DriverError, match="already exists"):
        await driver.prepare_incoming(make_spec("vm-1"), 8, "10.0.0.2")


async def test_a_failed_prepare_holds_nothing() -> None:
    driver = FakeDriver(Resources(4000, 1024))
    with pytest.raises(DriverError, match="insufficient memory") as caught:
        await driver.prepare_incoming(make_spec(mem_mib=2048), 7, "10.0.0.2")
    assert caught.value.retryable
    assert (driver.inventory(), driver.allocated()) == ([], ZERO)


async def test_finish_refuses_a_vm_whose_state_cannot_have_arrived() -> None:
    """The fake cannot see the source: a VM incoming for less than a migration's setup time
    cannot have received its state; after it, the VM runs."""
    clock = ManualClock()
    driver = FakeDriver(Resources(4000, 8192), migration=MigrationModel(0.5), clock_s=clock)
    await driver.prepare_incoming(make_spec(), 7, "10.0.0.2")
    clock.now_s += 0.2
    with pytest.raises(DriverError, match="has not arrived") as caught:
        await driver.finish_incoming("vm-1")
    assert caught.value.retryable
    assert states(driver) == {"vm-1": ObservedState.INCOMING}
    clock.now_s += 0.3
    await driver.finish_incoming("vm-1")
    assert states(driver) == {"vm-1": ObservedState.RUNNING}
    with pytest.raises(DriverError, match="not incoming"):
        await driver.finish_incoming("vm-1")


async def test_a_migration_takes_setup_plus_size_over_bandwidth_and_hands_over() -> None:
    model = MigrationModel(setup_s=0.05, bandwidth_mib_s=10240.0)
    driver = FakeDriver(Resources(4000, 8192), migration=model)
    await driver.start(make_spec(mem_mib=1024), 3)
    began_s = time.monotonic()
    await migrate(driver)
    took_s = time.monotonic() - began_s
    assert 0.15 <= took_s < 0.15 + 0.5  # 0.05 s + 1024 MiB / 10 GiB/s
    assert states(driver) == {"vm-1": ObservedState.HANDED_OVER}
    assert driver.migration_progress("vm-1") is None
    assert driver.allocated() == Resources(1000, 1024)  # held until destroyed
    await driver.resume("vm-1")  # never runs here again
    assert states(driver) == {"vm-1": ObservedState.HANDED_OVER}
    await driver.destroy("vm-1")
    assert driver.allocated() == ZERO


async def test_the_commands_bandwidth_cap_slows_the_copy() -> None:
    model = MigrationModel(setup_s=0.0, bandwidth_mib_s=10**6)
    driver = FakeDriver(Resources(4000, 8192), migration=model)
    await driver.start(make_spec(mem_mib=128), 1)
    began_s = time.monotonic()
    await migrate(driver, cap_mib_s=640)
    assert time.monotonic() - began_s >= 0.2  # 128 MiB at 640 MiB/s


async def test_progress_then_cancel_leaves_the_vm_running() -> None:
    clock = ManualClock()
    model = MigrationModel(setup_s=1.0, bandwidth_mib_s=100.0)
    driver = FakeDriver(Resources(4000, 8192), migration=model, clock_s=clock)
    disks = [DiskSpec(disk_id="d1", kind=DiskKind.DATA, size_mib=1024)]
    await driver.start(replace(make_spec(mem_mib=1024), disks=disks), 3)
    assert driver.migration_progress("vm-1") is None
    sending = asyncio.create_task(migrate(driver))
    await wait_until(lambda: driver.migration_progress("vm-1") is not None)
    assert driver.migration_progress("vm-1") == MigrationProgress(0, 2048)  # setting up
    clock.now_s += 6.0
    assert driver.migration_progress("vm-1") == MigrationProgress(500, 2048)
    clock.now_s += 100.0
    assert driver.migration_progress("vm-1") == MigrationProgress(2048, 2048)
    assert states(driver) == {"vm-1": ObservedState.RUNNING}  # runs on while it copies
    await driver.cancel_migration("vm-1")
    with pytest.raises(DriverError, match="cancelled") as caught:
        await sending
    assert caught.value.retryable
    assert states(driver) == {"vm-1": ObservedState.RUNNING}
    assert driver.migration_progress("vm-1") is None
    await driver.cancel_migration("vm-1")  # none runs: nothing happens


@pytest.mark.parametrize(
    "endpoint",
    [IncomingEndpoint("", 1, 2), IncomingEndpoint("10.0.0.2", 0, 2)],
    ids=["no-address", "no-port"],
)
async def test_a_migration_needs_an_endpoint(endpoint: IncomingEndpoint) -> None:
    driver = FakeDriver(Resources(4000, 8192))
    await driver.start(make_spec(), 1)
    with pytest.raises(DriverError, match="no endpoint"):
        await driver.migrate_out("vm-1", endpoint, max_downtime_ms=100, max_bandwidth_mib_s=0)
    assert states(driver) == {"vm-1": ObservedState.RUNNING}


async def test_only_a_running_vm_migrates() -> None:
    driver = FakeDriver(Resources(4000, 8192))
    await driver.start(make_spec(), 1)
    await driver.pause("vm-1")
    with pytest.raises(DriverError, match="paused, not running"):
        await migrate(driver)
    with pytest.raises(DriverError, match="no vm"):
        await migrate(driver, "ghost")


async def test_a_vm_destroyed_while_sending_fails_the_migration() -> None:
    driver = FakeDriver(Resources(4000, 8192), migration=MigrationModel(0.2, 1024.0))
    await driver.start(make_spec(), 1)
    sending = asyncio.create_task(migrate(driver))
    await wait_until(lambda: driver.migration_progress("vm-1") is not None)
    await driver.destroy("vm-1")
    with pytest.raises(DriverError, match="removed while migrating"):
        await sending
    assert driver.allocated() == ZERO
