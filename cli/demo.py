"""``stratus demo``: a throw-away local cluster, 12 VMs placed, the busiest host killed, every
VM recovered on the others; each step printed with its timing."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cli import output
from cli.client import StratusClient, connect
from cli.local import (
    POLL_S,
    ClusterSpec,
    LocalCluster,
    clock,
    describe_cluster,
    raise_interrupt,
    report_killed,
    say,
    section,
    start_cluster,
    wait_hosts_up,
)
from common import messages as m
from common.errors import StratusError
from common.waiting import poll

DEMO_CAPACITY = "16c/64g"
DEMO_HOSTS = 3
DEMO_TIMEOUT_S = 60.0
DEMO_VMS: tuple[tuple[str, int], ...] = (
    ("ExtraLarge", 1),
    ("A6", 1),
    ("Large", 1),
    ("Medium", 2),
    ("Small", 3),
    ("ExtraSmall", 4),
)
"""12 VMs, 24 cores and 64.25 GiB in all. Two surviving 16c/64g hosts keep 8 cores and 63.75 GiB
spare, at least the largest VM (8c, 28 GiB), so they take every VM in any placement order."""


def demo_requests() -> list[m.CreateVm]:
    requests = []
    for size, count in DEMO_VMS:
        for index in range(1, count + 1):
            name = f"{size.lower()}-{index}"
            requests.append(m.CreateVm(name=name, size=size, request_id=f"demo-{name}"))
    return requests


def busiest_host(vms: Sequence[m.VmInfo]) -> str:
    """The host running the most VMs (the lowest id on a tie)."""
    counts = Counter(vm.host for vm in vms if vm.host and vm.state is m.VmState.RUNNING)
    if not counts:
        raise StratusError("no host runs a VM")
    return max(sorted(counts), key=lambda host: counts[host])


async def _all_running(
    client: StratusClient, cluster: LocalCluster, names: set[str], timeout_s: float
) -> list[m.VmInfo]:
    vms: list[m.VmInfo] = []

    async def all_running() -> list[m.VmInfo] | None:
        nonlocal vms
        cluster.check_scheduler()
        vms = [vm for vm in await client.list_vms() if vm.name in names]
        for vm in vms:
            if vm.state in (m.VmState.FAILED, m.VmState.DELETED):
                raise StratusError(f"vm '{vm.name}' is {vm.state}: {vm.reason}")
        running = len(vms) == len(names) and all(vm.state is m.VmState.RUNNING for vm in vms)
        return vms if running else None

    if await poll(all_running, timeout_s=timeout_s, interval_s=POLL_S) is None:
        raise StratusError(f"VMs not running after {timeout_s:g}s: {output.state_summary(vms)}")
    return vms


async def _place(client: StratusClient, cluster: LocalCluster, timeout_s: float) -> list[m.VmInfo]:
    requests = demo_requests()
    sizes = {size.name: size for size in await client.list_sizes()}
    total_milli = sum(sizes[request.size].cpu_milli for request in requests)
    total_mib = sum(sizes[request.size].mem_mib for request in requests)
    section(f"2. Placing {len(requests)} VMs")
    say(", ".join(f"{count} x {size}" for size, count in DEMO_VMS))
    say(f"{output.cores(total_milli)} cores and {output.gib(total_mib)} GiB in all")
    started_s = time.monotonic()
    await asyncio.gather(*(client.create_vm(request) for request in requests))
    accepted_s = time.monotonic() - started_s
    vms = await _all_running(client, cluster, {request.name for request in requests}, timeout_s)
    elapsed_s = time.monotonic() - started_s
    rate = len(vms) / elapsed_s
    say(f"accepted in {accepted_s:.2f}s, all running in {elapsed_s:.2f}s ({rate:.0f} VMs/s)")
    say()
    say(output.vm_table(vms))
    return vms


def _newly_recovered(
    vms: Sequence[m.VmInfo],
    moved: dict[str, m.VmInfo],
    done: dict[str, output.Recovery],
    at_s: float,
) -> list[output.Recovery]:
    fresh = []
    for vm in vms:
        old = moved.get(vm.name)
        if old is None or vm.name in done or vm.state is not m.VmState.RUNNING:
            continue
        if vm.host and vm.host != old.host:
            fresh.append(output.Recovery(vm.name, old.host or "-", vm.host, vm.generation, at_s))
    return fresh


async def _watch_recovery(
    client: StratusClient,
    cluster: LocalCluster,
    victim: str,
    moved: dict[str, m.VmInfo],
    timeout_s: float,
) -> tuple[list[output.Recovery], list[m.VmInfo], list[m.HostInfo]]:
    killed_s = time.monotonic()
    done: dict[str, output.Recovery] = {}
    down = False
    while True:
        cluster.check_scheduler()
        vms, hosts = await client.list_vms(), await client.list_hosts()
        at_s = time.monotonic() - killed_s
        if not down and any(h.host_id == victim and h.state is m.HostState.DOWN for h in hosts):
            down = True
            say(f"  +{at_s:.2f}s  {victim} is down")
        for recovery in _newly_recovered(vms, moved, done, at_s):
            done[recovery.name] = recovery
            say(f"  +{at_s:.2f}s  {recovery.name} running on {recovery.to_host}")
        if down and len(done) == len(moved) and all(vm.state is m.VmState.RUNNING for vm in vms):
            return sorted(done.values(), key=lambda r: r.name), vms, hosts
        if at_s > timeout_s:
            missing = sorted(set(moved) - set(done))
            raise StratusError(
                f"not recovered {timeout_s:g}s after the kill: {victim} down={down}, "
                f"waiting for {', '.join(missing) or 'the host'}; {output.state_summary(vms)}"
            )
        await asyncio.sleep(POLL_S)


async def _kill_and_recover(
    client: StratusClient, cluster: LocalCluster, vms: list[m.VmInfo], timeout_s: float
) -> None:
    victim = busiest_host(vms)
    moved = {vm.name: vm for vm in vms if vm.host == victim}
    agent = cluster.agents[victim]
    section(f"3. Killing {victim}, the host with the most VMs ({len(moved)})")
    agent.process.kill()
    agent.exit_reported = True
    say(f"{clock()}  kill -9 {victim} (pid {agent.process.pid})")
    say("waiting for the scheduler to declare it down (dead_after_s) and place its VMs again")
    recoveries, final_vms, hosts = await _watch_recovery(client, cluster, victim, moved, timeout_s)
    section("4. Recovered")
    say(output.recovery_report(recoveries))
    say()
    say(output.vm_table(final_vms))
    say()
    say(output.host_table(hosts))


async def _demo(cluster: LocalCluster, started_s: float, timeout_s: float) -> None:
    nc = await connect(cluster.url)
    try:
        client = StratusClient(nc)
        hosts = await wait_hosts_up(client, cluster, timeout_s)
        say(f"{len(hosts)} hosts up in {time.monotonic() - started_s:.1f}s")
        say()
        say(output.host_table(hosts))
        vms = await _place(client, cluster, timeout_s)
        await _kill_and_recover(client, cluster, vms, timeout_s)
    finally:
        await nc.close()


def run_demo(args: argparse.Namespace) -> int:
    """``stratus demo``: a throw-away cluster, 12 VMs, one host killed, every VM recovered."""
    timeout_s = args.timeout_s or DEMO_TIMEOUT_S
    spec = ClusterSpec(
        data_dir=Path(tempfile.mkdtemp(prefix="stratus-demo-")),
        hosts=DEMO_HOSTS,
        capacity=DEMO_CAPACITY,
    )
    signal.signal(signal.SIGTERM, raise_interrupt)
    section(f"1. Starting a local cluster: nats-server, scheduler, {spec.hosts} host agents")
    started_s = time.monotonic()
    succeeded = False
    cluster = start_cluster(spec)
    try:
        say(f"fake driver, {spec.capacity} per host, fault domains fd-1..fd-{spec.hosts}")
        say(describe_cluster(cluster))
        asyncio.run(_demo(cluster, started_s, timeout_s))
        succeeded = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        section("5. Shutting down")
        report_killed(cluster.stop())
        if succeeded and not args.keep:
            shutil.rmtree(spec.data_dir, ignore_errors=True)
        else:
            say(f"logs and data kept in {spec.data_dir}")
    say("done")
    return 0
