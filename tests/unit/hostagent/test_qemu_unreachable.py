"""Adoption of a QEMU whose monitor does not answer (here: the process is SIGSTOPped while a new
agent adopts it). It is never forgotten: its pid file and sockets stay (the fence guard still
sees it), it is reported as not confirmed running (``starting``, with the reason) so the
scheduler waits instead of starting another copy, it is adopted for real once it answers, and
if it must be fenced while still unreachable it is killed deliberately, with a log line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from common.messages import ObservedState
from hostagent.drivers.qemuproc import pid_alive, read_pid
from hostagent.guardvms import live_vms
from tests.unit.hostagent.test_qemu_driver import DriverFactory, kit, make_driver, spec
from tests.waiting import wait_until

__all__ = ["kit", "make_driver"]  # fixtures, re-used
pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process frozen (its QMP monitors accept connections but never greet)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def _left_running(make_driver: DriverFactory, name: str) -> int:
    first = make_driver()
    await first.start(spec(name), 3)
    pid = read_pid(first.files(name))
    assert pid is not None
    await first.close()  # the agent goes away; its VM keeps running
    return pid


async def test_an_unreachable_qemu_is_reported_and_kept_under_the_guard(
    make_driver: DriverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    pid = await _left_running(make_driver, "vm-u")
    second = make_driver()
    with stopped(pid):
        assert await second.adopt() == ["vm-u"]
        files = second.files("vm-u")
        assert files.pid.exists() and files.qmp.exists() and files.guard.exists()
        assert [vm.name for vm in live_vms(second.root)] == ["vm-u"], "still under the guard"
        [vm] = second.inventory()
        assert (vm.generation, vm.state) == (3, ObservedState.STARTING)
        assert "unreachable" in vm.reason
        assert "vm unreachable vm=vm-u" in caplog.text
    # It answers again: adopted for real, running.
    await wait_until(lambda: second.inventory()[0].state is ObservedState.RUNNING, timeout_s=30)
    assert second.inventory()[0].reason == ""
    assert pid_alive(pid, second.root)


async def test_an_unreachable_qemu_that_must_be_fenced_is_killed_deliberately(
    make_driver: DriverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    pid = await _left_running(make_driver, "vm-k")
    second = make_driver()
    with stopped(pid):
        await second.adopt()
        await asyncio.wait_for(second.pause("vm-k"), timeout=20)
        assert not pid_alive(pid, second.root)
    assert second.inventory() == []
    assert "vm killed vm=vm-k" in caplog.text and "unreachable" in caplog.text
