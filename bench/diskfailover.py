"""Failover with disks intact: a host running a replicated VM is lost; how long until the VM
runs on another host with its disks (real QEMU under TCG, agents in network namespaces).

Three qemu hosts (each its own fault domain and namespace, on one underlay segment), the
scheduler keeping two copies of every replicated disk, one tiny guest with a replicated OS disk
and data disk. Each round: wait until each disk has its two current copies, lose the VM's host
(``kill -9`` of its agent, fence guard, QEMU and replica server, its data directory removed),
and time from the loss until the API says the VM runs elsewhere at a higher generation (its
guest booted from the copies that survived); the events say when the host was declared dead
and when the VM was placed. The lost host then comes back empty (a new machine in its place)
for the next round. p50/p99 over the rounds; goal p99 <= 12 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from bench.harness import percentile
from cli.client import StratusClient
from common import codec, subjects
from common.errors import ApiError
from common.messages import CreateVm, HostEvent, HostState, VmEvent, VmInfo, VmState
from common.spec_messages import DiskStorage
from rigs.netqemu import TIMINGS, NetRig
from rigs.qemukit import boot_kit

VM = "bench-failover"
HOSTS = ["h1", "h2", "h3"]
GOAL_P99_S = 12.0
STEP_S = 0.05
"""How often the bench asks the API (its own pace; the figures are the events' times)."""


class Timeline:
    """When the lost host was declared dead and when the VM was placed and ran again (from the
    events, on the bench's clock)."""

    def __init__(self) -> None:
        self.dead_at: dict[str, float] = {}
        self.placed_at: dict[int, float] = {}

    async def on_event(self, msg: Msg) -> None:
        event = codec.event.decode(msg.data)
        now = time.monotonic()
        if isinstance(event, HostEvent) and event.state is HostState.DOWN:
            self.dead_at.setdefault(event.host_id, now)
        elif isinstance(event, VmEvent) and (event.name, event.state) == (VM, VmState.SCHEDULED):
            self.placed_at.setdefault(event.generation, now)


async def _until(what: str, timeout_s: float, check: Any) -> Any:
    """``await check()`` until it gives something other than None (at the bench's pace)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(ApiError):  # the scheduler may not answer for a moment
            found = await check()
            if found is not None:
                return found
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(STEP_S)


async def _copied(client: StratusClient) -> VmInfo | None:
    """The VM once it runs and each of its disks has two current copies."""
    vm = await client.get_vm(VM)
    current = [[r for r in disk.replicas if r.state == "current"] for disk in vm.disks]
    done = vm.state is VmState.RUNNING and all(len(copies) == 2 for copies in current)
    return vm if done else None


async def _hosts_up(client: StratusClient, hosts: set[str]) -> bool | None:
    up = {h.host_id for h in await client.list_hosts() if h.state == "up"}
    return True if hosts <= up else None


async def _round(rig: NetRig, client: StratusClient, timeline: Timeline) -> dict[str, float]:
    before = await _until("two current copies", 180, lambda: _copied(client))
    lost = before.host
    assert lost is not None

    async def elsewhere() -> VmInfo | None:
        vm = await client.get_vm(VM)
        moved = vm.host not in (None, lost) and vm.generation > before.generation
        return vm if moved and vm.state is VmState.RUNNING else None

    timeline.dead_at.pop(lost, None)
    lost_at = time.monotonic()
    rig.lose_host(lost)
    after = await _until("the VM running elsewhere", 120, elsewhere)
    ran_at = time.monotonic()
    dead_at = timeline.dead_at.get(lost, ran_at)
    placed_at = timeline.placed_at.get(after.generation, ran_at)
    rig.start_agent(lost)  # a new machine in its place, with empty disks
    await _until("the lost host back", 60, lambda: _hosts_up(client, set(HOSTS)))
    return {
        "failover_s": round(ran_at - lost_at, 3),
        "declared_dead_after_s": round(dead_at - lost_at, 3),
        "placed_after_s": round(placed_at - lost_at, 3),
        "booted_after_placed_s": round(ran_at - placed_at, 3),
    }


async def measure_failover(rounds: int) -> dict[str, Any]:
    kit = boot_kit()
    with tempfile.TemporaryDirectory(prefix="stratus-bench-failover-") as tmp:
        rig = NetRig(Path(tmp), kit)
        try:
            rig.start(HOSTS)
            for host in HOSTS:
                rig.start_agent(host)
            nc = await nats.connect(rig.url, connect_timeout=5)
            client = StratusClient(nc, timeout_s=10.0)
            timeline = Timeline()
            await nc.subscribe(subjects.EVENTS_WILDCARD, cb=timeline.on_event)
            await _until("hosts up", 60, lambda: _hosts_up(client, set(HOSTS)))
            request = CreateVm(
                name=VM, size="Tiny", data_disks_mib=[64], storage=DiskStorage.REPLICATED
            )
            await client.create_vm(request)
            measured = [await _round(rig, client, timeline) for _ in range(rounds)]
            await nc.close()
        finally:
            rig.stop()
    times = [m["failover_s"] for m in measured]
    return {
        "rounds": measured,
        "failover_s": {
            "p50": percentile(times, 0.5),
            "p99": percentile(times, 0.99),
            "max": max(times),
        },
        "timings": TIMINGS,
        "goal_p99_s": GOAL_P99_S,
        "meets_goal": percentile(times, 0.99) <= GOAL_P99_S,
    }
