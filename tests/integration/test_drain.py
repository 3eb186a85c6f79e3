"""End to end: drain a host with the scheduler and agents as processes, over the NATS API."""

from __future__ import annotations

import pytest

from cli.client import StratusClient
from common.errors import ApiError
from common.fields import ErrorCode
from common.messages import CreateVm, VmState
from rigs.cluster import Cluster, overlapping_executions
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def test_drained_host_ends_empty_with_its_vms_running_elsewhere_never_twice(
    cluster: Cluster, client: StratusClient
) -> None:
    cluster.start_scheduler("--drain-parallelism", "2")
    for i in (1, 2, 3):
        cluster.start_agent(f"h{i}", capacity="4c/8g", fault_domain=f"fd-{i}")
    await wait_hosts_up(client, 3)
    # Fill h1 with four VMs: the others are cordoned while they are created.
    await client.cordon_host("h2")
    await client.cordon_host("h3")
    names = [f"web-{i}" for i in range(4)]
    for name in names:
        await client.create_vm(CreateVm(name=name, size="Small"))
    before = await wait_all_running(client, names)
    assert {vm.host for vm in before.values()} == {"h1"}
    await client.uncordon_host("h2")
    await client.uncordon_host("h3")

    started = await client.drain_host("h1", cold=True)  # test_migration.py: live drains
    assert started.cordoned and started.draining and started.drain_remaining == 4
    seen_remaining: list[int] = []

    async def drained() -> bool:
        [h1] = [h for h in await client.list_hosts() if h.host_id == "h1"]
        seen_remaining.append(h1.drain_remaining)
        return not h1.draining

    await wait_until(drained, timeout_s=30, interval_s=0.05, message="drain of h1 to finish")
    after = await wait_all_running(client, names, avoid_host="h1")
    assert all(vm.generation == before[vm.name].generation + 1 for vm in after.values())
    [h1] = [h for h in await client.list_hosts() if h.host_id == "h1"]
    assert h1.vms == 0 and h1.cordoned and h1.drain_remaining == 0
    assert max(seen_remaining) <= 4 and seen_remaining == sorted(seen_remaining, reverse=True)
    assert overlapping_executions(cluster.execution_log(), killed={}) == []
    # h1's agent reports nothing left running: its audit log ends every VM with a stop.
    last = {str(r["vm"]): str(r["event"]) for r in cluster.execution_log() if r["host"] == "h1"}
    assert set(last) == set(names) and set(last.values()) <= {"stop", "destroy"}

    # Fill the rest: now only cordoned h1 has room, so a drain of h2 is refused up front.
    fillers = [f"fill-{i}" for i in range(4)]
    for name in fillers:
        await client.create_vm(CreateVm(name=name, size="Small"))
    await wait_all_running(client, fillers, avoid_host="h1")
    with pytest.raises(ApiError) as refused:
        await client.drain_host("h2")
    assert refused.value.code == ErrorCode.INSUFFICIENT_CAPACITY
    hosts = {h.host_id: h for h in await client.list_hosts()}
    assert not hosts["h2"].cordoned and not hosts["h2"].draining
    vms = {vm.name: vm for vm in await client.list_vms()}
    assert all(vms[n].state is VmState.RUNNING and vms[n].host != "h1" for n in names + fillers)
