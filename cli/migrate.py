"""``stratus vm migrate NAME --wait``: follow a live migration to its end with progress lines."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from cli.waiting import Progress
from common import messages as m
from common.errors import ApiError
from common.migration_messages import MigrationInfo

POLL_S = 0.2


class VmGetter(Protocol):
    async def get_vm(self, name: str) -> m.VmInfo: ...


def progress_line(name: str, migration: MigrationInfo, elapsed_s: float) -> str:
    """``web-1: copying to h2 40/128 MiB (31%) 2.4s``."""
    line = f"{name}: {migration.phase} to {migration.target}"
    if migration.total_mib > 0:
        share = 100 * migration.transferred_mib // migration.total_mib
        line += f" {migration.transferred_mib}/{migration.total_mib} MiB ({share}%)"
    return f"{line} {elapsed_s:.1f}s"


async def wait_migrated(
    client: VmGetter, started: m.VmInfo, timeout_s: float, progress: Progress
) -> m.VmInfo:
    """Poll the VM until its migration ends: the VM on the destination, or ``ApiError(failed)``
    with the reason (the VM runs on where it was), ``(timeout)`` if slow."""
    assert started.migration is not None
    target, attempt = started.migration.target, started.migration.attempt
    start_s = time.monotonic()
    vm = started
    try:
        while vm.migration is not None and vm.migration.attempt == attempt:
            elapsed_s = time.monotonic() - start_s
            if elapsed_s >= timeout_s:
                detail = f"vm '{vm.name}' still migrating after {timeout_s:g}s"
                raise ApiError("timeout", f"{detail} ({vm.migration.phase})")
            progress.show(progress_line(vm.name, vm.migration, elapsed_s))
            await asyncio.sleep(POLL_S)
            vm = await client.get_vm(vm.name)
    finally:
        progress.clear()
    if vm.host == target and vm.generation >= attempt and vm.state is m.VmState.RUNNING:
        return vm
    raise ApiError("failed", f"vm '{vm.name}' did not move to {target}: {vm.reason}")
