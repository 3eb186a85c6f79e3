"""End to end: a real nats-server, the scheduler and host agents as separate processes."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from cli.client import StratusClient
from common import codec, subjects
from common.messages import CreateVm, HostEvent, HostState, VmState
from common.resources import Resources
from common.waiting import Deadline
from rigs.cluster import Cluster, overlapping_executions
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.proxy import CuttableProxy
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MIX = [
    "ExtraSmall",
    "Small",
    "Medium",
    "Large",
    "Small",
    "Medium",
    "ExtraSmall",
    "Small",
    "A6",
    "Medium",
]


async def start_three(cluster: Cluster, client: StratusClient, capacity: str = "16c/64g") -> None:
    cluster.start_scheduler()
    for i in range(1, 4):
        cluster.start_agent(f"h{i}", capacity=capacity, fault_domain=f"fd-{i}")
    await wait_hosts_up(client, 3)


async def create_mix(client: StratusClient, count: int) -> list[str]:
    names = [f"vm-{i:02d}" for i in range(count)]
    await asyncio.gather(
        *(client.create_vm(CreateVm(name=n, size=MIX[i % len(MIX)])) for i, n in enumerate(names))
    )
    return names


async def test_twenty_vms_run_and_capacity_accounts_match(
    cluster: Cluster, client: StratusClient, nc: Client
) -> None:
    # The agents' own accounts: each host's latest full inventory (a heartbeat that leaves its
    # inventory out says it is unchanged since the last one sent in full).
    reported: dict[str, Resources] = {}

    async def on_heartbeat(msg: Msg) -> None:
        hb = codec.heartbeat.decode(msg.data)
        if not hb.vms_omitted:
            reported[hb.host_id] = sum((vm.resources for vm in hb.vms), Resources())

    sub = await nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=on_heartbeat)
    await start_three(cluster, client)
    names = await create_mix(client, 20)
    vms = await wait_all_running(client, names)
    expected: dict[str, Resources] = defaultdict(Resources)
    for vm in vms.values():
        assert vm.host is not None
        expected[vm.host] += Resources(vm.cpu_milli, vm.mem_mib)
    hosts = {h.host_id: h for h in await client.list_hosts()}
    for host, info in hosts.items():
        assert info.allocated == expected[host], host
        assert info.allocated.fits(info.capacity)
    # The agents' own accounts (their inventories) agree with the scheduler's.
    want = {h: expected[h] for h in hosts}
    await wait_until(lambda: reported == want, timeout_s=10, message=f"inventories {want}")
    await sub.unsubscribe()


async def test_kill_9_of_an_agent_moves_its_vms_and_never_runs_two_copies(
    cluster: Cluster, client: StratusClient
) -> None:
    await start_three(cluster, client)
    names = await create_mix(client, 12)
    vms = await wait_all_running(client, names)
    by_host: dict[str, list[str]] = defaultdict(list)
    for vm in vms.values():
        by_host[str(vm.host)].append(vm.name)
    victim = max(by_host, key=lambda h: len(by_host[h]))
    killed_at = time.time()
    cluster.kill_agent(victim)
    start = time.monotonic()
    after = await wait_all_running(client, names, timeout_s=20, avoid_host=victim)
    recovery_s = time.monotonic() - start
    print(
        f"\nkill -9 recovery of {len(by_host[victim])} vms: {recovery_s:.2f}s "
        f"(dead_after_s={cluster.timings['dead_after_s']})"
    )
    for name in by_host[victim]:
        assert after[name].generation == vms[name].generation + 1
    hosts = {h.host_id: h for h in await client.list_hosts()}
    assert hosts[victim].state is HostState.DOWN
    assert overlapping_executions(cluster.execution_log(), {victim: killed_at}) == []


async def test_partitioned_agent_fences_before_its_vms_are_replaced(
    cluster: Cluster, client: StratusClient
) -> None:
    proxy = CuttableProxy(cluster.nats.port)
    port = await proxy.start()
    try:
        cluster.start_scheduler()
        cluster.start_agent(
            "h1", capacity="8c/16g", fault_domain="fd-1", nats_url=f"nats://127.0.0.1:{port}"
        )
        await wait_hosts_up(client, 1)
        names = await create_mix(client, 4)
        await wait_all_running(client, names)
        cluster.start_agent("h2", capacity="8c/16g", fault_domain="fd-2")
        await wait_hosts_up(client, 2)
        proxy.sever()
        await wait_all_running(client, names, timeout_s=20, avoid_host="h1")
        log = cluster.execution_log()
        paused = {
            str(r["vm"]): float(str(r["t"]))
            for r in log
            if r["host"] == "h1" and r["event"] == "pause"
        }
        started = {
            str(r["vm"]): float(str(r["t"]))
            for r in log
            if r["host"] == "h2" and r["event"] == "running"
        }
        assert set(paused) == set(names) == set(started)
        for name in names:
            assert paused[name] < started[name], name
        proxy.heal()  # h1 comes back with stale, paused copies: the scheduler has them destroyed

        def stale_destroyed() -> bool:
            rows = cluster.execution_log()
            return {
                str(r["vm"]) for r in rows if r["host"] == "h1" and r["event"] == "destroy"
            } == set(names)

        await wait_until(stale_destroyed, timeout_s=15, message="stale copies destroyed on h1")
        await wait_hosts_up(client, 2)
        assert overlapping_executions(cluster.execution_log(), {}) == []
    finally:
        await proxy.close()


async def test_scheduler_restart_loses_nothing_and_declares_no_host_dead(
    cluster: Cluster, client: StratusClient, nc: Client
) -> None:
    await start_three(cluster, client)
    names = await create_mix(client, 10)
    before = await wait_all_running(client, names)
    cluster.kill_scheduler()
    # Down for longer than dead_after_s: a restart must still not declare anyone dead.
    await asyncio.sleep(0)  # let the kill land; the wait below is on a condition
    outage = Deadline.after(cluster.timings["dead_after_s"] + 0.5)
    await wait_until(outage.passed, timeout_s=5, message="outage")
    cluster.start_scheduler()
    await wait_hosts_up(client, 3)
    more = [f"after-{i}" for i in range(3)]
    for name in more:
        await client.create_vm(CreateVm(name=name, size="Small"))
    after = await wait_all_running(client, names + more)
    for name in names:
        assert (after[name].host, after[name].generation) == (
            before[name].host,
            before[name].generation,
        )
    js = nc.jetstream()
    sub = await js.subscribe(f"{subjects.ROOT}.events.host.>", ordered_consumer=True)
    downs = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1.0)
        except Exception:
            break
        event = codec.event.decode(msg.data)
        if isinstance(event, HostEvent) and event.state is HostState.DOWN:
            downs.append(event)
    assert downs == []
    assert all(vm.state is VmState.RUNNING for vm in after.values())
