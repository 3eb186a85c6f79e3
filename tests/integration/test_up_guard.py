"""``stratus up --driver qemu`` supervises each host's fence guard: with the agent and the guard
both kill -9'd at once, the guard comes back and the real QEMU guest ends paused once the lease
runs out (QEMU's own run state, ``query-status``, says so)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from cli.client import StratusClient
from common.messages import CreateVm
from hostagent.drivers.qmp import QmpClient
from hostagent.fenceguard import guard_pid
from hostagent.leasefile import read_lease
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.test_qemu import alive, kill
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
HOST = "host-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    data = tmp_path / "up"
    shutil.copytree(boot_kit(), data / "boot")  # the kit the tests already built
    port = _free_port()
    argv = [sys.executable, "-m", "cli", "up", "--hosts", "1", "--driver", "qemu"]
    argv += ["--data-dir", str(data), "--nats-port", str(port)]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield data, f"nats://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for path in (data / "agents").glob("*/qemu/vms/*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                kill(int(path.read_text().strip()))
        agents = data / "agents"
        if (pid := guard_pid(agents, HOST)) is not None:
            kill(pid)


async def qmp_status(path: Path) -> str:
    qmp = await QmpClient.connect(path)
    try:
        return await qmp.query_status()
    finally:
        await qmp.close()


@pytest.mark.timeout(240)
async def test_agent_and_guard_killed_together_still_end_with_the_vm_paused(
    up: tuple[Path, str],
) -> None:
    data, url = up
    agents = data / "agents"

    async def connected() -> bool:
        with contextlib.suppress(Exception):
            await (await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)).close()
            return True
        return False

    await wait_until(connected, timeout_s=30, message="nats up")
    nc = await nats.connect(url)
    try:
        client = StratusClient(nc)
        await wait_hosts_up(client, 1)
        await client.create_vm(CreateVm(name="vm-k", size="Tiny"))
        await wait_all_running(client, ["vm-k"], timeout_s=120)
    finally:
        await nc.close()
    vm_dir = agents / HOST / "qemu" / "vms" / "vm-k"
    qemu = int((vm_dir / "qemu.pid").read_text().strip())
    assert await qmp_status(vm_dir / "guard.sock") == "running"  # the agent holds qmp.sock
    guard = guard_pid(agents, HOST)
    lease = read_lease(agents / HOST / "lease.json")
    assert guard is not None and lease is not None

    for pid in (lease.pid, guard):  # killall -9: agent and guard in the same instant
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not alive(guard) and not alive(lease.pid), message="both dead")

    def guard_back() -> bool:
        pid = guard_pid(agents, HOST)
        return pid is not None and pid != guard

    await wait_until(guard_back, timeout_s=20, message="a new fence guard")

    async def paused() -> bool:
        return await qmp_status(vm_dir / "qmp.sock") == "paused"

    await wait_until(paused, timeout_s=30, message="the orphaned guest paused")
    assert alive(qemu), "paused, never destroyed"

    def pause_logged() -> bool:  # written right after the pause itself
        text = (agents / HOST / "executions.jsonl").read_text()
        rows = [json.loads(line) for line in text.split()]
        return (rows[-1]["vm"], rows[-1]["event"]) == ("vm-k", "pause")

    await wait_until(pause_logged, timeout_s=5, message="the pause in the audit log")
