"""A simulated-host pool: many hosts in one process, each like a real agent on the wire."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from common import codec, subjects
from common.config import AgentConfig
from common.messages import (
    AgentCommand,
    DeleteVm,
    Heartbeat,
    HeartbeatAck,
    HostCommands,
    ObservedState,
    PrepareIncoming,
    StartVm,
    VmSpec,
)
from common.migration_messages import FinishIncoming, MigrateOut, MigrationReport, MigrationStatus
from common.natsserver import NatsServer
from hostagent.execlog import ExecEvent, read_execlog
from hostagent.simpool import (
    POOL_GC_THRESHOLDS,
    SimPool,
    resolve_pool_settings,
    sim_underlay_ip,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

EXECLOG = "executions.jsonl"


class FakeScheduler:
    """Acks every heartbeat except those of muted hosts; keeps each host's latest report."""

    def __init__(self) -> None:
        self.latest: dict[str, Heartbeat] = {}
        self.counts: dict[str, int] = {}
        self.muted: set[str] = set()

    async def on_heartbeat(self, msg: Msg) -> None:
        hb = codec.heartbeat.decode(msg.data)
        self.latest[hb.host_id] = hb
        self.counts[hb.host_id] = self.counts.get(hb.host_id, 0) + 1
        if hb.host_id in self.muted:
            return
        ack = HeartbeatAck(
            host_id=hb.host_id,
            seq=hb.seq,
            scheduler_id="test",
            heartbeat_interval_s=0.2,
            fence_after_s=0.8,
        )
        await msg.respond(codec.encode(ack))

    def vm_state(self, host: str, name: str) -> ObservedState | None:
        hb = self.latest.get(host)
        return next((vm.state for vm in hb.vms if vm.name == name), None) if hb else None


@pytest.fixture
async def scheduler(nc: Client) -> FakeScheduler:
    fake = FakeScheduler()
    await nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=fake.on_heartbeat)
    await nc.flush()
    return fake


@pytest.fixture
async def pool(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[SimPool]:
    config = AgentConfig(
        nats_url=nats_server.url,
        capacity="4c/8g",
        data_dir=str(tmp_path),
        heartbeat_interval_s=0.2,
        fence_after_s=0.8,
    )
    the_pool = SimPool(resolve_pool_settings(config, 3, "sim", 2))
    task = asyncio.create_task(the_pool.run())
    await wait_until(the_pool.ready.is_set, timeout_s=10, message="pool ready")
    yield the_pool
    the_pool.request_stop()
    await asyncio.wait_for(task, timeout=10)


def _start(host: str, name: str) -> bytes:
    spec = VmSpec(name=name, size="Small", cpu_milli=1000, mem_mib=1024, image="tiny")
    return codec.encode(HostCommands(host_id=host, commands=[StartVm(vm=spec, generation=1)]))


async def test_each_simulated_host_heartbeats_with_its_own_identity(
    pool: SimPool, scheduler: FakeScheduler
) -> None:
    await wait_until(lambda: len(scheduler.latest) == 3, timeout_s=10, message="3 hosts")
    reports = scheduler.latest
    assert sorted(reports) == ["sim-00001", "sim-00002", "sim-00003"]
    assert [reports[h].fault_domain for h in sorted(reports)] == ["fd-0", "fd-1", "fd-0"]
    assert len({hb.boot_id for hb in reports.values()}) == 3


def audit(data_dir: Path, vm: str) -> list[tuple[str, ExecEvent]]:
    """The pool's execution log lines about ``vm``: (host, event)."""
    return [(r.host, r.event) for r in read_execlog(data_dir / "sim-pool" / EXECLOG) if r.vm == vm]


async def test_commands_reach_only_their_host_and_fencing_is_per_host(
    pool: SimPool, scheduler: FakeScheduler, nc: Client, tmp_path: Path
) -> None:
    """... and what a report says a VM did is in the pool's execution log before the report
    reaches the scheduler."""
    await wait_until(lambda: len(scheduler.latest) == 3, timeout_s=10, message="3 hosts")
    await nc.publish(subjects.host_commands("sim-00002"), _start("sim-00002", "a"))
    await nc.publish(subjects.host_commands("sim-00003"), _start("sim-00003", "b"))
    await wait_until(
        lambda: (
            scheduler.vm_state("sim-00002", "a") is ObservedState.RUNNING
            and scheduler.vm_state("sim-00003", "b") is ObservedState.RUNNING
        ),
        timeout_s=10,
        message="both VMs running",
    )
    assert not scheduler.latest["sim-00001"].vms
    assert audit(tmp_path, "a") == [
        ("sim-00002", ExecEvent.START),
        ("sim-00002", ExecEvent.RUNNING),
    ]
    scheduler.muted.add("sim-00002")  # its lease runs out: it pauses its VM, the others do not
    await wait_until(
        lambda: scheduler.vm_state("sim-00002", "a") is ObservedState.PAUSED,
        timeout_s=10,
        message="sim-00002 fenced",
    )
    assert scheduler.latest["sim-00002"].fenced
    assert audit(tmp_path, "a")[-1] == ("sim-00002", ExecEvent.PAUSE)
    assert scheduler.vm_state("sim-00003", "b") is ObservedState.RUNNING


async def test_a_silenced_host_stops_heartbeating_while_the_others_go_on(
    pool: SimPool, scheduler: FakeScheduler, nc: Client
) -> None:
    await wait_until(lambda: len(scheduler.latest) == 3, timeout_s=10, message="3 hosts")
    reply = await nc.request(subjects.SIM_SILENCE, b"sim-00001", timeout=5)
    assert reply.data == b"ok"
    silenced_at = scheduler.counts["sim-00001"]
    others_at = scheduler.counts["sim-00002"]
    await wait_until(
        lambda: scheduler.counts["sim-00002"] >= others_at + 5, timeout_s=10, message="5 more"
    )
    assert scheduler.counts["sim-00001"] <= silenced_at + 1  # at most one already on its way


def _commands(host: str, *commands: AgentCommand) -> bytes:
    return codec.encode(HostCommands(host_id=host, commands=list(commands)))


async def test_a_vm_migrates_between_simulated_hosts(
    pool: SimPool, scheduler: FakeScheduler, nc: Client
) -> None:
    """The migration commands run through each simulated host's AgentState, as on an agent."""
    source, target = "sim-00001", "sim-00002"
    await wait_until(lambda: len(scheduler.latest) == 3, timeout_s=10, message="3 hosts")

    def report(host: str) -> tuple[ObservedState, int, MigrationReport | None] | None:
        hb = scheduler.latest.get(host)
        vm = next((vm for vm in hb.vms if vm.name == "m"), None) if hb else None
        return (vm.state, vm.generation, vm.migration) if vm else None

    def status(host: str) -> tuple[ObservedState, MigrationStatus | None] | None:
        seen = report(host)
        return (seen[0], seen[2].status if seen[2] else None) if seen else None

    spec = VmSpec(name="m", size="Small", cpu_milli=1000, mem_mib=1024, image="tiny")
    await nc.publish(subjects.host_commands(source), _start(source, "m"))
    await wait_until(lambda: status(source) == (ObservedState.RUNNING, None), timeout_s=10)
    prepare = PrepareIncoming(vm=spec, generation=2, source=source)
    await nc.publish(subjects.host_commands(target), _commands(target, prepare))
    ready = (ObservedState.INCOMING, MigrationStatus.READY)
    await wait_until(lambda: status(target) == ready, timeout_s=10, message="ready")
    seen = report(target)
    assert seen is not None and seen[2] is not None
    endpoint = seen[2]
    assert endpoint.address == sim_underlay_ip(1)
    out = MigrateOut(
        name="m",
        generation=1,
        target=target,
        target_generation=2,
        address=endpoint.address,
        migration_port=endpoint.migration_port,
        nbd_port=endpoint.nbd_port,
    )
    await nc.publish(subjects.host_commands(source), _commands(source, out))
    sent = (ObservedState.HANDED_OVER, MigrationStatus.SENT)
    await wait_until(lambda: status(source) == sent, timeout_s=10, message="handed over")
    finish = FinishIncoming(name="m", generation=2)
    await nc.publish(subjects.host_commands(target), _commands(target, finish))
    await wait_until(lambda: report(target) == (ObservedState.RUNNING, 2, None), timeout_s=10)
    delete = DeleteVm(name="m", generation=1)
    await nc.publish(subjects.host_commands(source), _commands(source, delete))
    await wait_until(lambda: report(source) is None, timeout_s=10, message="source deleted")


async def test_the_pool_tunes_the_collector_while_it_serves_and_undoes_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    before = gc.get_threshold()
    config = AgentConfig(nats_url=nats_server.url, capacity="4c/8g", data_dir=str(tmp_path))
    the_pool = SimPool(resolve_pool_settings(config, 2, "sim", 1))
    task = asyncio.create_task(the_pool.run())
    await wait_until(the_pool.ready.is_set, timeout_s=10, message="pool ready")
    assert gc.get_threshold() == POOL_GC_THRESHOLDS
    assert gc.get_freeze_count() > 0  # the hosts built are left out of collections
    the_pool.request_stop()
    await asyncio.wait_for(task, timeout=10)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
