"""The campaign's QEMU part: a few real guests (TCG) on two agents whose data dir is a small
tmpfs, a leader and a standby, and faults that pause, move or starve them (a full disk, an
agent killed or frozen, a partition, the leader killed, nats-server frozen), while the guests
are asked to migrate live from one host to the other every few seconds.

Execution is judged from outside the system (tests/chaos/consolewatch.py): the guests' own
console ticks, per QEMU process, and /proc. At no instant may two processes of one VM tick; at
the end every VM runs exactly once, on the host the scheduler names, and no other copy lives.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

from nats.aio.client import Client
from nats.errors import Error as NatsError

from cli.client import StratusClient
from common.errors import ApiError
from common.messages import CreateVm, VmInfo, VmState
from common.waiting import WaitTimeout, wait_until
from rigs.chaos import consolewatch, disks, netns, observer
from rigs.chaos.campaign import (
    Report,
    Settings,
    api_ready,
    final_vms,
    leader_finder,
    read_events,
    run_on_rig,
)
from rigs.chaos.consolewatch import ConsoleWatch, alive
from rigs.chaos.faults import QEMU_WEIGHTS, Injector, Violation, plan
from rigs.chaos.load import Acked, Op
from rigs.chaos.rig import TINY, QemuSetup, Rig

HOSTS = 2
VMS = 3
BOOT_TIMEOUT_S = 90.0
CONVERGE_TIMEOUT_S = 120.0
MIGRATE_EVERY_S = 6.0
TICKING_S = 3.0
"""A VM counts as executing at the end when its copy ticked this recently."""


async def run_qemu_campaign(settings: Settings, kit: Path) -> Report:
    """Run the QEMU part; the guests, guards, disks and namespaces are removed whatever
    happens."""
    report = Report(settings.seed, t0=time.time())
    settings.workdir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(netns.clean_leftovers)
    await asyncio.to_thread(disks.clean_leftovers)
    rig = Rig(settings.workdir, netns.Network(), hosts=HOSTS, qemu=QemuSetup(kit))
    return await run_on_rig(rig, report, lambda nc: _campaign(rig, nc, settings, report))


async def _campaign(rig: Rig, nc: Client, settings: Settings, report: Report) -> None:
    client = StratusClient(nc, timeout_s=5.0)
    await wait_until(
        lambda: api_ready(client, HOSTS), timeout_s=60, message="every host up", interval_s=0.02
    )
    watch = ConsoleWatch(rig.agents_dir)
    watching = asyncio.create_task(watch.run())
    try:
        acked = await _create_vms(client)
        names = [a.vm for a in acked]
        await wait_until(
            lambda: _executing_once(client, watch, names),
            timeout_s=BOOT_TIMEOUT_S,
            interval_s=0.5,
            message="every guest booted and ticking",
        )
        rng = random.Random(settings.seed)
        report.faults = plan(rng, settings.faults, sorted(rig.agents), QEMU_WEIGHTS)
        injector = Injector(rig, leader=leader_finder(rig, nc))
        moving = asyncio.create_task(_mover(client, names, random.Random(rng.random()), report))
        try:
            await injector.run(report.faults)
        finally:
            moving.cancel()
            await asyncio.gather(moving, return_exceptions=True)
        report.violations += injector.crashes
        await _converge(client, watch, names, report)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    await _judge(nc, client, watch, acked, report)


async def _mover(
    client: StratusClient, names: list[str], rng: random.Random, report: Report
) -> None:
    """Live migrations while the faults go on: every MIGRATE_EVERY_S a guest is asked to move
    to the other host (refusals, e.g. while it is not running, are counted, not retried)."""
    while True:
        await asyncio.sleep(MIGRATE_EVERY_S * (0.5 + rng.random()))  # the load's own pace
        name = rng.choice(names)
        try:
            await client.migrate_vm(name)
            report.outcomes["migrate_acked"] += 1
        except ApiError as exc:
            report.outcomes[f"migrate_refused_{exc.code}"] += 1
        except (NatsError, TimeoutError, OSError):
            report.outcomes["migrate_unanswered"] += 1


async def _create_vms(client: StratusClient) -> list[Acked]:
    acked = []
    for index in range(1, VMS + 1):
        name, request_id = f"guest-{index}", f"rq-guest-{index}"
        await client.create_vm(CreateVm(name=name, size=TINY, request_id=request_id))
        acked.append(Acked(request_id, name, Op.CREATE_API, time.time(), 1))
    return acked


async def _executing_once(client: StratusClient, watch: ConsoleWatch, names: list[str]) -> bool:
    try:
        vms = await final_vms(client)
    except ApiError:
        return False
    return not executing_problems(watch, vms, names)


def executing_problems(watch: ConsoleWatch, vms: dict[str, VmInfo], names: list[str]) -> list[str]:
    """What keeps the guests from their converged state, seen from outside: each VM running
    (API) with exactly one live QEMU process, on its host, ticking; no other copy alive."""
    copies = watch.copies()
    now = time.time()
    problems = []
    for name in names:
        vm = vms.get(name)
        live = sorted(c for c in copies if c.vm == name)
        if vm is None or vm.state is not VmState.RUNNING:
            problems.append(f"{name} is {vm.state if vm else 'unknown'}")
        elif [c.host for c in live] != [vm.host]:
            problems.append(f"{name} has processes on {[c.host for c in live]}, not [{vm.host}]")
        elif (last := watch.last_tick(live[0])) is None or now - last > TICKING_S:
            problems.append(f"{name} on {vm.host} (pid {live[0].pid}) does not tick")
    problems += [f"stray process {c}" for c in copies if c.vm not in names and alive(c.pid)]
    return problems


async def _converge(
    client: StratusClient, watch: ConsoleWatch, names: list[str], report: Report
) -> None:
    started = time.monotonic()
    last: list[str] = []

    async def converged() -> bool:
        nonlocal last
        try:
            vms = await final_vms(client)
        except ApiError as exc:
            last = [f"api: {exc}"]
            return False
        last = executing_problems(watch, vms, names)
        return not last

    try:
        await wait_until(
            converged, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.5, message="convergence"
        )
    except WaitTimeout:
        report.violations += [Violation("not_converged", p) for p in last]
    report.converge_s = time.monotonic() - started


async def _judge(
    nc: Client, client: StratusClient, watch: ConsoleWatch, acked: list[Acked], report: Report
) -> None:
    watch.save(report.t0)
    report.violations += consolewatch.two_running_copies(watch.ticks)
    report.violations += [
        Violation("qemu_sigstopped", f"{c.vm} on {c.host} pid {c.pid}")
        for c in sorted(watch.stopped_seen)
    ]
    events = await read_events(nc)
    report.violations += observer.healthy_hosts_declared_dead(events, report.faults)
    report.violations += observer.acked_outcomes(acked, await final_vms(client), events)
    report.acked = Counter(str(a.op) for a in acked)
    report.outcomes.update(
        {"qemu_processes": len(watch.ticks), "ticks": sum(map(len, watch.ticks.values()))}
    )
    report.vms_created = len(acked)
