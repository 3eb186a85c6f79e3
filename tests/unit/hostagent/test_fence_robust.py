"""Fencing keeps acting when its audit log cannot be written (a full disk) and when one VM's
monitor hangs: the other VMs are paused within the per-VM deadline, not one after another."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from common.messages import ObservedState, StartVm
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecLog
from hostagent.fenceguard import Guard
from hostagent.guardvms import PAUSE_DEADLINE_S, GuardedVm
from hostagent.leasefile import lease_path, write_lease
from tests.unit.hostagent.conftest import FakeClock, make_agent, make_spec
from tests.unit.hostagent.test_fenceguard import BOOT, World, record

FULL = Path("/dev/full")
"""Every write to it fails with ENOSPC: a full disk."""


def full_disk_log(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(FULL)
    return path


async def test_a_full_disk_does_not_stop_the_agents_fencing(
    tmp_path: Path, driver: FakeDriver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    execlog = ExecLog(full_disk_log(tmp_path / "h1" / "executions.jsonl"), "h1")
    agent = make_agent(driver, execlog, clock)  # holding a lease of fence_after_s 4 s
    await agent.execute(StartVm(vm=make_spec("vm-1"), generation=1))
    await agent.execute(StartVm(vm=make_spec("vm-2"), generation=1))
    clock.now_s += 4.0
    await agent.enforce_lease()  # the first pause's audit line fails: the second VM still pauses
    assert {vm.name: vm.state for vm in agent.inventory()} == {
        "vm-1": ObservedState.PAUSED,
        "vm-2": ObservedState.PAUSED,
    }
    assert "audit" in caplog.text and "No space left" in caplog.text
    execlog.close()


def test_a_full_disk_does_not_stop_the_guard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path)
    full_disk_log(tmp_path / "h1" / "executions.jsonl")
    world.lease(110.0)
    assert world.guard.step(110.0)
    assert sorted(world.pauses) == ["vm-a", "vm-b"] and world.running == set()
    assert "audit" in caplog.text
    world.running = {"vm-a", "vm-b"}  # resumed by someone: the guard still acts
    assert world.guard.step(110.0 + 2.0)
    assert world.running == set()


def test_one_hung_monitor_does_not_delay_the_other_vms(tmp_path: Path) -> None:
    release = threading.Event()
    paused: dict[str, float] = {}

    def pause(vm: GuardedVm) -> bool:
        if vm.name == "hung":
            release.wait(10)
            raise TimeoutError("QMP did not answer")
        paused[vm.name] = time.monotonic()
        return True

    vms = [GuardedVm(name, 1, 500 + i, tmp_path) for i, name in enumerate(["hung", "b", "c", "d"])]
    guard = Guard(
        tmp_path,
        "h1",
        boot_id=BOOT,
        pause=pause,
        find_vms=lambda root: list(vms),
        agent_alive=lambda lease: False,
    )
    (tmp_path / "h1").mkdir()
    write_lease(lease_path(tmp_path, "h1"), record(110.0))
    started = time.monotonic()
    try:
        guard.step(110.0)
        elapsed_s = time.monotonic() - started
        assert set(paused) == {"b", "c", "d"}
        assert elapsed_s < PAUSE_DEADLINE_S + 0.5, f"the step took {elapsed_s:.2f}s"
        assert max(paused.values()) - started < PAUSE_DEADLINE_S
        guard.step(110.1)  # the hung pause is still in flight: not started twice
    finally:
        release.set()
        guard.close()
