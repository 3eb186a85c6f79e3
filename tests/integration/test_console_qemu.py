"""The console of a real QEMU guest (TCG, the tiny image): its boot line arrives through
``stratus vm logs`` and ``stratus vm console``, and typing reaches the guest's busybox shell on
ttyS0 (its answer comes back through the console)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cli.client import StratusClient
from common.messages import CreateVm
from hostagent.drivers import seriallog
from hostagent.drivers.qemuproc import VmFiles, read_serial
from rigs.cluster import Cluster
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.test_console import Cli, finish, read_until
from tests.integration.test_qemu import (
    BOOT_S,
    TINY,
    kit as kit,  # fixtures, re-exported
    qemu_cluster as qemu_cluster,
    start_qemu_agent,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_boot_line_through_logs_and_a_shell_through_console(
    qemu_cluster: Cluster, kit: Path, client: StratusClient
) -> None:
    start_qemu_agent(qemu_cluster, kit, "q1")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="con", size=TINY))
    await wait_all_running(client, ["con"], timeout_s=BOOT_S)
    cli = Cli({**os.environ, "STRATUS_NATS": qemu_cluster.nats.url})

    logs = await cli.run("vm", "logs", "con")
    assert logs.status == 0, logs.err
    assert b"STRATUS-READY vm=con boot_count=1" in logs.out

    proc = await cli.spawn("vm", "console", "con")
    seen = bytearray()
    await read_until(proc, b"STRATUS-READY vm=con", seen)
    assert proc.stdin is not None
    proc.stdin.write(b"echo answer=$((6*7))\n")
    await proc.stdin.drain()
    await read_until(proc, b"answer=42", seen)
    proc.stdin.close()
    done = await finish(proc)
    assert done.status == 0, done.err
    assert "detached from con (end of input)" in done.err
    async with asyncio.timeout(5):
        tail = await cli.run("vm", "logs", "con", "--tail", "3")
    assert b"answer=42" in tail.out


async def test_a_guest_flooding_its_console_keeps_a_bounded_serial_log(
    qemu_cluster: Cluster, kit: Path, client: StratusClient
) -> None:
    """3 MiB on the serial console: serial.log keeps counting every byte (its size, so the
    console's offsets), but holds about TRIM_AT_BYTES on disk; the boot and the newest output
    stay readable."""
    start_qemu_agent(qemu_cluster, kit, "q1")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="flood", size=TINY))
    await wait_all_running(client, ["flood"], timeout_s=BOOT_S)
    command = (
        b"dd if=/dev/zero bs=1024 count=3072 2>/dev/null | tr '\\0' z; echo; echo flood-$((6*7))\n"
    )
    await client.console_type("q1", "flood", command)
    log = qemu_cluster.workdir / "agents" / "q1" / "qemu" / "vms" / "flood" / "serial.log"

    async def flooded() -> bool:
        tail = await client.console_tail("q1", "flood", 256)
        return tail.output is not None and b"flood-42" in tail.output.data

    await wait_until(flooded, timeout_s=120, interval_s=0.5, message="3 MiB written and echoed")
    assert log.stat().st_size > 3 * 1024 * 1024
    assert log.stat().st_blocks * 512 <= seriallog.TRIM_AT_BYTES + 64 * 1024
    kept = read_serial(VmFiles(log.parent))
    assert b"STRATUS-READY vm=flood" in kept  # what an agent adopting the VM looks for
    cli = Cli({**os.environ, "STRATUS_NATS": qemu_cluster.nats.url})
    logs = await cli.run("vm", "logs", "flood", "--tail", "2")
    assert b"flood-42" in logs.out
