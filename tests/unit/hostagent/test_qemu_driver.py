"""The qemu driver against real QEMU (TCG): boot, disks across stop/start, pause while booting,
the boot queue, re-adoption after an agent restart, a killed process, a boot timeout, a pause by
the fence guard."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from common.errors import DriverError
from common.messages import DiskKind, DiskSpec, ObservedState, VmSpec
from common.resources import Resources
from hostagent.drivers.qemu import QemuDriver
from hostagent.drivers.qemuproc import QemuSettings, VmFiles, pid_alive, read_pid, read_serial
from hostagent.guardvms import live_vms, pause_vm
from hostagent.images import ImageCache
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

DriverFactory = Callable[..., QemuDriver]


@pytest.fixture(scope="module")
def kit() -> Path:
    return boot_kit()


@pytest.fixture
async def make_driver(kit: Path, tmp_path: Path) -> AsyncIterator[DriverFactory]:
    made: list[QemuDriver] = []

    def make(*, boot_timeout_s: float = 60.0, max_concurrent_boots: int = 2) -> QemuDriver:
        settings = QemuSettings(
            qemu_binary="qemu-system-x86_64",
            accel="tcg",
            kernel=kit / "vmlinux",
            initramfs=kit / "initramfs.gz",
            boot_timeout_s=boot_timeout_s,
            stop_timeout_s=10.0,
            max_concurrent_boots=max_concurrent_boots,
        )
        root = tmp_path / "a-rather-long-directory-name-for-the-agent-data" / "host-1" / "qemu"
        driver = QemuDriver(
            settings, root, ImageCache(root / "images", kit), capacity=Resources(4000, 2048)
        )
        made.append(driver)
        return driver

    yield make
    for driver in made:  # kill whatever a failed test left running
        for vm in driver.inventory():
            await driver.destroy(vm.name)
        await driver.close()


def spec(name: str, *disks: DiskSpec) -> VmSpec:
    return VmSpec(
        name=name, size="Tiny", cpu_milli=1000, mem_mib=96, image="tiny", disks=list(disks)
    )


def state_of(driver: QemuDriver, name: str) -> ObservedState | None:
    return next((vm.state for vm in driver.inventory() if vm.name == name), None)


def boot_count(driver: QemuDriver, name: str) -> int:
    found = re.findall(rb"boot_count=(\d+)", read_serial(driver.files(name)))
    return int(found[-1]) if found else 0


async def test_boot_stop_start_keeps_the_os_disk_then_destroy_removes_it(
    make_driver: DriverFactory,
) -> None:
    driver = make_driver()
    os_disk = DiskSpec(disk_id="vm-a-g1-os", kind=DiskKind.OS, image="tiny")
    data_disk = DiskSpec(disk_id="vm-a-g1-data0", kind=DiskKind.DATA, size_mib=64)
    await driver.start(spec("vm-a", os_disk, data_disk), 1)
    assert state_of(driver, "vm-a") is ObservedState.RUNNING
    assert boot_count(driver, "vm-a") == 1
    assert b"disks=vda:64M,vdb:64M" in read_serial(driver.files("vm-a"))
    pid = read_pid(driver.files("vm-a"))
    assert pid is not None

    await driver.stop("vm-a")
    assert driver.inventory() == []
    assert not pid_alive(pid, driver.root)
    assert b"STRATUS-POWEROFF" in read_serial(driver.files("vm-a")), "graceful ACPI power-off"
    assert driver.disk_path("vm-a-g1-os").exists()

    await driver.start(spec("vm-a", os_disk, data_disk), 3)
    assert boot_count(driver, "vm-a") == 2, "the guest read back what it wrote before the stop"

    await driver.destroy("vm-a")
    assert driver.inventory() == []
    assert not driver.disk_path("vm-a-g1-os").exists()
    assert not driver.disk_path("vm-a-g1-data0").exists()
    assert not driver.files("vm-a").dir.exists()


async def test_pause_while_booting_returns_paused_and_resume_finishes_the_boot(
    make_driver: DriverFactory,
) -> None:
    driver = make_driver()
    starting = asyncio.create_task(driver.start(spec("vm-p"), 1))
    await wait_until(lambda: state_of(driver, "vm-p") is not None, timeout_s=5)
    await driver.pause("vm-p")  # at once, without waiting for the boot
    assert state_of(driver, "vm-p") is ObservedState.PAUSED
    await asyncio.wait_for(starting, timeout=30)
    assert state_of(driver, "vm-p") is ObservedState.PAUSED
    assert boot_count(driver, "vm-p") == 0, "a fenced guest never ran"

    await driver.resume("vm-p")
    await wait_until(
        lambda: state_of(driver, "vm-p") is ObservedState.RUNNING, timeout_s=60, message="boot"
    )
    await driver.pause("vm-p")
    vm_qmp = driver.vms["vm-p"].qmp
    assert vm_qmp is not None
    assert await vm_qmp.query_status() == "paused"
    await driver.stop("vm-p")  # a paused VM is stopped hard: it must not run again
    assert driver.inventory() == []


async def test_the_fence_guard_pauses_through_its_own_socket_and_the_driver_notices(
    make_driver: DriverFactory,
) -> None:
    driver = make_driver()
    changed = asyncio.Event()
    driver.on_change = changed.set
    await driver.start(spec("vm-g"), 4)
    [vm] = live_vms(driver.root)
    assert (vm.name, vm.generation) == ("vm-g", 4)

    assert await asyncio.to_thread(pause_vm, vm), "the guard's monitor works beside the agent's"
    await asyncio.wait_for(changed.wait(), timeout=10)
    assert state_of(driver, "vm-g") is ObservedState.PAUSED, "told by QMP's STOP event"
    assert not await asyncio.to_thread(pause_vm, vm), "already paused: nothing to do"

    await driver.resume("vm-g")  # the agent resumes it, on the scheduler's word
    vm_qmp = driver.vms["vm-g"].qmp
    assert vm_qmp is not None
    assert await vm_qmp.query_status() == "running"
    assert state_of(driver, "vm-g") is ObservedState.RUNNING


async def test_boots_beyond_the_limit_wait_their_turn(make_driver: DriverFactory) -> None:
    driver = make_driver(max_concurrent_boots=1)
    first = asyncio.create_task(driver.start(spec("vm-q1"), 1))
    await wait_until(lambda: read_pid(driver.files("vm-q1")) is not None, timeout_s=10)
    second = asyncio.create_task(driver.start(spec("vm-q2"), 1))
    await wait_until(lambda: state_of(driver, "vm-q2") is ObservedState.STARTING, timeout_s=5)
    assert read_pid(driver.files("vm-q2")) is None, "queued behind the first boot"
    await asyncio.wait_for(asyncio.gather(first, second), timeout=60)
    assert {vm.state for vm in driver.inventory()} == {ObservedState.RUNNING}


async def test_a_new_driver_adopts_running_vms_and_notices_a_killed_one(
    make_driver: DriverFactory,
) -> None:
    first = make_driver()
    await first.start(spec("vm-r"), 7)
    pid = read_pid(first.files("vm-r"))
    assert pid is not None
    await first.close()  # the agent stops: its VMs keep running
    assert pid_alive(pid, first.root)

    second = make_driver()
    changed = asyncio.Event()
    second.on_change = changed.set
    assert await second.adopt() == ["vm-r"]
    [vm] = second.inventory()
    assert (vm.generation, vm.state) == (7, ObservedState.RUNNING)

    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(changed.wait(), timeout=10)
    assert second.inventory() == []
    assert not VmFiles(second.files("vm-r").dir).pid.exists()


async def test_boot_timeout_fails_with_the_serial_tail_and_leaves_nothing(
    make_driver: DriverFactory,
) -> None:
    driver = make_driver(boot_timeout_s=0.5)
    with pytest.raises(DriverError) as failure:
        await driver.start(spec("vm-t"), 1)
    assert "boot timeout" in str(failure.value)
    assert "serial" in str(failure.value)
    assert not failure.value.retryable
    assert driver.inventory() == []
    assert not driver.disk_path("vm-t-os").exists()
    assert read_pid(driver.files("vm-t")) is None
