"""Live migration between two real agent processes (fake driver) over a real nats-server, with
no scheduler: the test plays it, answering each host's heartbeats (their leases) and sending
the attempt protocol of common/migration_messages.py on each host's command subject."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from common import codec, subjects
from common.messages import (
    AgentCommand,
    DeleteVm,
    HostCommands,
    ObservedState,
    PrepareIncoming,
    StartVm,
)
from common.migration_messages import (
    CancelMigration,
    FinishIncoming,
    MigrateOut,
    MigrationReport,
    MigrationStatus,
)
from common.natsserver import NatsServer
from hostagent.execlog import ExecEvent, read_execlog
from tests.integration.test_agent import Agent, FakeScheduler, spec
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SETUP_S = 0.3
BANDWIDTH_MIB_S = 2048
"""A 1 GiB VM moves in 0.3 s + 0.5 s."""
ADDRESSES = {"h1": "127.0.0.1", "h2": "127.0.0.2"}


class Host(FakeScheduler):
    """One host as the scheduler sees it: its heartbeats acked, commands sent to it."""

    async def command(self, *commands: AgentCommand) -> None:
        body = HostCommands(host_id=self.host_id, commands=list(commands))
        await self.nc.publish(subjects.host_commands(self.host_id), codec.encode(body))
        await self.nc.flush()

    def report(self, name: str) -> MigrationReport | None:
        vm = self.vm(name)
        return vm.migration if vm is not None else None

    def sees(
        self,
        name: str,
        state: ObservedState,
        status: MigrationStatus | None,
        generation: int | None = None,
    ) -> bool:
        vm = self.vm(name)
        if vm is None or vm.state is not state:
            return False
        if generation is not None and vm.generation != generation:
            return False
        return (vm.migration.status if vm.migration else None) is status


@pytest.fixture
def agents(nats_server: NatsServer, tmp_path: Path) -> Iterator[dict[str, Agent]]:
    args = ["--fake-migration-setup", str(SETUP_S)]
    args += ["--fake-migration-bandwidth", str(BANDWIDTH_MIB_S)]
    processes = {
        host: Agent(nats_server.url, tmp_path, host, [*args, "--underlay-ip", ADDRESSES[host]])
        for host in ("h1", "h2")
    }
    try:
        yield processes
    finally:
        for process in processes.values():
            process.stop()


@pytest.fixture
async def hosts(nc: Client, agents: dict[str, Agent]) -> AsyncIterator[tuple[Host, Host]]:
    source, target = Host(nc, "h1"), Host(nc, "h2")
    for host in (source, target):
        await host.start()
    # two agents starting on a busy machine may take a while before their first heartbeat
    await wait_until(lambda: bool(source.acked_seqs and target.acked_seqs), timeout_s=20)
    for host in (source, target):
        await host.wait_acked()
    yield source, target


def migrate_out(name: str, ready: MigrationReport, *, cap_mib_s: int = 0) -> MigrateOut:
    return MigrateOut(
        name=name,
        generation=1,
        target="h2",
        target_generation=ready.attempt,
        address=ready.address,
        migration_port=ready.migration_port,
        nbd_port=ready.nbd_port,
        max_bandwidth_mib_s=cap_mib_s,
    )


async def running_on_source_and_ready_on_target(
    source: Host, target: Host, name: str
) -> MigrationReport:
    """``name`` runs on h1 at generation 1 and waits on h2 as attempt 2: the ready report."""
    await source.command(StartVm(vm=spec(name), generation=1))
    await wait_until(lambda: source.sees(name, ObservedState.RUNNING, None), message="running")
    await target.command(PrepareIncoming(vm=spec(name), generation=2, source="h1"))
    await wait_until(
        lambda: target.sees(name, ObservedState.INCOMING, MigrationStatus.READY, 2),
        message="incoming and ready",
    )
    ready = target.report(name)
    assert ready is not None
    return ready


async def test_a_vm_moves_from_one_agent_to_the_other(
    hosts: tuple[Host, Host], agents: dict[str, Agent]
) -> None:
    source, target = hosts
    ready = await running_on_source_and_ready_on_target(source, target, "vm-1")
    assert (ready.peer, ready.address) == ("h1", "127.0.0.2")
    assert ready.migration_port > 0 and ready.nbd_port > 0

    await source.command(migrate_out("vm-1", ready, cap_mib_s=512))  # 0.3 s + 2 s
    await wait_until(
        lambda: source.sees("vm-1", ObservedState.HANDED_OVER, MigrationStatus.SENT, 1),
        message="handed over",
    )
    sending = [
        vm.migration
        for heartbeat in source.heartbeats
        for vm in heartbeat.vms
        if vm.name == "vm-1" and vm.state is ObservedState.RUNNING and vm.migration
    ]
    assert sending and all(r.status is MigrationStatus.SENDING for r in sending)
    assert sending[0].attempt == 2
    sent = source.report("vm-1")
    assert sent is not None and (sent.peer, sent.attempt) == ("h2", 2)
    assert sent.transferred_mib == sent.total_mib == 1024

    await target.command(FinishIncoming(name="vm-1", generation=2))
    await wait_until(lambda: target.sees("vm-1", ObservedState.RUNNING, None, 2), message="runs")
    await source.command(DeleteVm(name="vm-1", generation=1))  # the stale source copy
    await wait_until(lambda: source.vm("vm-1") is None, message="source copy destroyed")

    assert agents["h1"].events("vm-1") == [
        (1, ExecEvent.START),
        (1, ExecEvent.RUNNING),
        (1, ExecEvent.PAUSE),
        (1, ExecEvent.DESTROY),
    ]
    assert agents["h2"].events("vm-1") == [(2, ExecEvent.INCOMING), (2, ExecEvent.RESUME)]
    paused_at = [e.t for e in read_execlog(agents["h1"].execlog) if e.event is ExecEvent.PAUSE]
    resumed_at = [e.t for e in read_execlog(agents["h2"].execlog) if e.event is ExecEvent.RESUME]
    assert paused_at[0] <= resumed_at[0], "never two copies executing"


async def test_a_cancelled_migration_leaves_the_vm_running_on_the_source(
    hosts: tuple[Host, Host], agents: dict[str, Agent]
) -> None:
    source, target = hosts
    ready = await running_on_source_and_ready_on_target(source, target, "vm-2")
    await source.command(migrate_out("vm-2", ready, cap_mib_s=64))  # 16 s at this rate

    def copying() -> bool:
        report = source.report("vm-2")
        return report is not None and report.transferred_mib > 0

    await wait_until(copying, message="progress reported")
    report = source.report("vm-2")
    assert report is not None and report.total_mib == 1024
    await source.command(CancelMigration(name="vm-2", generation=1, target_generation=2))
    await wait_until(
        lambda: source.sees("vm-2", ObservedState.RUNNING, MigrationStatus.FAILED, 1),
        message="back to running, failed",
    )
    failed = source.report("vm-2")
    assert failed is not None and "cancelled" in failed.detail
    await target.command(DeleteVm(name="vm-2", generation=2))  # the attempt's copy
    await wait_until(lambda: target.vm("vm-2") is None, message="incoming copy destroyed")
    assert agents["h1"].events("vm-2") == [(1, ExecEvent.START), (1, ExecEvent.RUNNING)]
    # Held while incoming, destroyed, never ran.
    assert agents["h2"].events("vm-2") == [(2, ExecEvent.INCOMING), (2, ExecEvent.DESTROY)]


async def test_a_failed_migration_is_reported_and_a_premature_finish_refused(
    hosts: tuple[Host, Host], agents: dict[str, Agent]
) -> None:
    source, target = hosts
    ready = await running_on_source_and_ready_on_target(source, target, "vm-3")
    nowhere = MigrationReport(attempt=2, peer="h2", status=MigrationStatus.READY, address="x")
    await source.command(migrate_out("vm-3", nowhere))  # no port to send to
    await wait_until(
        lambda: source.sees("vm-3", ObservedState.RUNNING, MigrationStatus.FAILED, 1),
        message="failed, still running",
    )
    failed = source.report("vm-3")
    assert failed is not None and "no endpoint" in failed.detail

    await source.command(migrate_out("vm-3", ready))  # the same attempt again: over
    await target.command(FinishIncoming(name="vm-3", generation=2))  # its state never came
    seen = len(target.heartbeats)
    await target.wait_for_heartbeat_after(seen + 3)
    assert source.sees("vm-3", ObservedState.RUNNING, MigrationStatus.FAILED, 1)
    assert agents["h1"].events("vm-3")[-1] == (1, ExecEvent.RUNNING)
    assert not target.sees("vm-3", ObservedState.RUNNING, None)
