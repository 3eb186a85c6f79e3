"""Waiting on what the API reports, and running the CLI, for tests against a running cluster."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

from cli.client import StratusClient
from common.errors import ApiError
from common.messages import HostState, VmInfo, VmState
from tests.waiting import wait_until


async def wait_hosts_up(client: StratusClient, count: int, timeout_s: float = 20.0) -> None:
    async def ready() -> bool:
        try:
            hosts = await client.list_hosts()
        except ApiError:
            return False
        return sum(h.state is HostState.UP for h in hosts) >= count

    await wait_until(ready, timeout_s=timeout_s, message=f"{count} hosts up")


async def wait_all_running(
    client: StratusClient, names: list[str], timeout_s: float = 20.0, avoid_host: str | None = None
) -> dict[str, VmInfo]:
    """Wait until every VM in ``names`` is running (and not on ``avoid_host``)."""
    seen: dict[str, VmInfo] = {}

    async def ready() -> bool:
        try:
            vms = {vm.name: vm for vm in await client.list_vms()}
        except ApiError:
            return False
        seen.clear()
        seen.update(vms)
        return all(
            name in vms
            and vms[name].state is VmState.RUNNING
            and (avoid_host is None or vms[name].host != avoid_host)
            for name in names
        )

    await wait_until(ready, timeout_s=timeout_s, message=f"{len(names)} vms running")
    return dict(seen)


@dataclass(frozen=True)
class Run:
    """What one ``stratus`` command did."""

    status: int
    out: str
    err: str


async def run_stratus(nats_url: str, *argv: str, timeout_s: float = 60.0) -> Run:
    """``stratus ARGV...`` as a user runs it (its own process, no standard input), against
    ``nats_url``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "STRATUS_NATS": nats_url},
    )  # fmt: skip
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
