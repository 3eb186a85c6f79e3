"""One fault-injection campaign: start the cluster, run the load, inject the seeded faults, undo
them, wait for convergence, and let the observer judge. Used by tests/chaos and bench/chaos.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from cli.client import StratusClient
from common import codec, subjects
from common.errors import ApiError
from common.messages import HostState, VmInfo
from common.network_messages import CreateVnet
from common.waiting import WaitTimeout, wait_until
from hostagent.drivers.fakeledger import read_acknowledged, read_copies
from rigs.chaos import netns, observer
from rigs.chaos.faults import Fault, Injector, Violation, plan
from rigs.chaos.load import Load, Op
from rigs.chaos.rig import Rig
from scheduler.shell.leader import LEASE_BUCKET, LEASE_KEY, LeaseHolder

CONVERGE_TIMEOUT_S = 90.0
VNET, VNET_CIDR = "chaos", "10.14.0.0/16"
"""The network some of the load's VMs have a NIC in."""


@dataclass
class Report:
    seed: int
    faults: list[Fault] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    acked: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    vms_created: int = 0
    vms_deleted: int = 0
    duration_s: float = 0.0
    converge_s: float = 0.0
    t0: float = 0.0

    def faults_by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(str(f.kind) for f in self.faults if f.start).items()))

    def violations_by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(v.kind for v in self.violations).items()))

    def timeline(self) -> str:
        return "\n".join(f.line(self.t0) for f in self.faults if f.start)

    def summary(self) -> str:
        lines = [
            f"seed={self.seed} faults={self.faults_by_kind()} duration_s={self.duration_s:.1f}",
            f"acked={dict(self.acked)} vms_created={self.vms_created} "
            f"vms_deleted={self.vms_deleted} converge_s={self.converge_s:.1f}",
            f"violations={self.violations_by_kind()}",
        ]
        lines += [f"  {v.kind}: {v.detail}" for v in self.violations[:40]]
        return "\n".join(lines)


async def connect_observer(url: str) -> Client:
    async def quiet(*_args: object) -> None:
        pass

    return await nats.connect(
        url,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        connect_timeout=2,
        error_cb=quiet,
        disconnected_cb=quiet,
    )


async def api_ready(client: StratusClient, hosts: int) -> bool:
    try:
        listed = await client.list_hosts()
    except ApiError:
        return False
    return sum(h.state is HostState.UP for h in listed) >= hosts


async def read_events(nc: Client) -> list[object]:
    """Every event on the events stream, in order (the observer's own reading)."""
    js = nc.jetstream()
    last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    events: list[object] = []
    if last == 0:
        return events
    sub = await js.subscribe(subjects.EVENTS_WILDCARD, ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            events.append(codec.event.decode(msg.data))
            if msg.metadata.sequence.stream >= last:
                return events
    finally:
        await sub.unsubscribe()


def leader_finder(rig: Rig, nc: Client) -> Callable[[], Awaitable[str | None]]:
    """Which of the rig's schedulers holds the lease (None: nobody, or NATS does not answer)."""

    async def leader() -> str | None:
        try:
            kv = await nc.jetstream(timeout=1.0).key_value(LEASE_BUCKET)
            entry = await kv.get(LEASE_KEY)
            node = msgspec.json.decode(entry.value or b"", type=LeaseHolder).node
        except (NatsError, TimeoutError, msgspec.DecodeError):
            return None
        return next((name for name in rig.scheduler_names if rig.node_of(name) == node), None)

    return leader


async def final_vms(client: StratusClient) -> dict[str, VmInfo]:
    return {vm.name: vm for vm in await client.list_vms()}


@dataclass
class Settings:
    seed: int
    faults: int
    workdir: Path
    hosts: int = 4
    progress_every: int = 0
    """Print a line every this many faults (0: quiet)."""


async def run_campaign(settings: Settings) -> Report:
    """Run one campaign; the cluster and its namespaces are removed whatever happens."""
    report = Report(settings.seed, t0=time.time())
    settings.workdir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(netns.clean_leftovers)
    rig = Rig(settings.workdir, netns.Network(), hosts=settings.hosts)
    return await run_on_rig(rig, report, lambda nc: _campaign(rig, nc, settings, report))


async def run_on_rig(
    rig: Rig, report: Report, campaign: Callable[[Client], Awaitable[None]]
) -> Report:
    """Start ``rig``, run ``campaign`` with an observer's connection, and stop the rig whatever
    happens; the report's duration covers it all."""
    started = time.monotonic()
    try:
        await asyncio.to_thread(rig.start)
        nc = await connect_observer(rig.url)
        try:
            await campaign(nc)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()
    finally:
        await asyncio.to_thread(rig.stop)
        report.duration_s = time.monotonic() - started
    return report


async def _campaign(rig: Rig, nc: Client, settings: Settings, report: Report) -> None:
    client = StratusClient(nc, timeout_s=5.0)
    await wait_until(
        lambda: api_ready(client, settings.hosts),
        timeout_s=60,
        interval_s=0.02,
        message="every host up",
    )
    report.faults = plan(random.Random(settings.seed), settings.faults, sorted(rig.agents))
    await client.create_vnet(CreateVnet(name=VNET, cidr=VNET_CIDR))
    load = Load(nc, random.Random(settings.seed + 1), vnet=VNET)
    injector = Injector(rig, leader=leader_finder(rig, nc), progress_every=settings.progress_every)
    async with asyncio.TaskGroup() as group:
        load_task = group.create_task(load.run())
        try:
            await injector.run(report.faults)
        finally:
            load.stop()
        await load_task  # in-flight retries end (bounded by RETRY_FOR_S)
    report.violations += injector.crashes
    await _converge(rig, nc, client, load, report)
    await _judge(rig, nc, client, load, report)


async def _converge(
    rig: Rig, nc: Client, client: StratusClient, load: Load, report: Report
) -> None:
    """Wait (bounded) until every desired VM runs once, nothing else is held anywhere, and
    every up host's agent reports the network configuration it should hold."""
    started = time.monotonic()
    last: list[str] = []
    reported: dict[str, str] = {}

    async def heard(msg: Msg) -> None:
        try:
            beat = codec.heartbeat.decode(msg.data)
        except msgspec.DecodeError:
            return
        reported[beat.host_id] = beat.network_digest

    async def converged() -> bool:
        nonlocal last
        try:
            vms = await final_vms(client)
            hosts, vnets = await client.list_hosts(), await client.list_vnets()
        except ApiError as exc:
            last = [f"api: {exc}"]
            return False
        rows = observer.read_rows(rig.agents_dir)
        last = observer.convergence_problems(rows, report.faults, vms, load.acked, load.delete_sent)
        last += observer.network_problems(vms, vnets, hosts, reported)
        return not last

    heartbeats = await nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=heard)

    try:
        await wait_until(
            converged, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.5, message="convergence"
        )
    except WaitTimeout:
        report.violations += [Violation("not_converged", p) for p in last[:50]]
    finally:
        await heartbeats.unsubscribe()
    report.converge_s = time.monotonic() - started


async def _judge(rig: Rig, nc: Client, client: StratusClient, load: Load, report: Report) -> None:
    rows = observer.read_rows(rig.agents_dir)
    replay = observer.Replay()
    replay.run(rows, report.faults, load.sizes)
    report.violations += replay.violations
    events = await read_events(nc)
    report.violations += observer.destroyed_during_nats_outages(
        rows, report.faults, load.acked, events
    )
    report.violations += observer.duplicates_refused(report.faults, rig.duplicate_dir)
    report.violations += observer.mistakes_stood_by(report.faults, rig.mistake_log)
    report.violations += observer.healthy_hosts_declared_dead(events, report.faults)
    report.violations += observer.address_violations(events)
    report.violations += observer.acked_outcomes(
        load.acked, await final_vms(client), events, load.delete_sent
    )
    report.violations += await _judge_disks(rig, client, report)
    report.violations += observer.disks_given_up(events)
    report.acked = Counter(str(a.op) for a in load.acked)
    report.outcomes.update(load.outcomes)
    report.vms_created = len({a.vm for a in load.acked if a.op is not Op.DELETE})
    report.vms_deleted = len({a.vm for a in load.acked if a.op is Op.DELETE})


async def _judge_disks(rig: Rig, client: StratusClient, report: Report) -> list[Violation]:
    """Every current copy of a replicated disk holds every write acknowledged to its guest, as
    the fake driver's files (the storage) and the scheduler's final view say."""
    acked = read_acknowledged(rig.agents_dir)  # first: see disk_content_violations
    vms = await final_vms(client)
    copies = read_copies(rig.agents_dir)
    later = await final_vms(client)
    report.outcomes["disk_writes_acked"] = sum(acked.values())
    report.outcomes["disk_copies"] = sum(map(len, copies.values()))
    return observer.disk_content_violations(vms, acked, copies, later)
