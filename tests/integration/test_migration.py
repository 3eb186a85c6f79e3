"""End to end: live migration with the scheduler and two fake-driver agents as processes, over
the NATS API (and the CLI's verbs): `vm migrate`, a live drain, a cancel."""

from __future__ import annotations

import io

import pytest

from cli.client import StratusClient
from cli.migrate import wait_migrated
from cli.waiting import Progress
from common.errors import ApiError
from common.fields import ErrorCode
from common.messages import CreateVm, VmInfo, VmState
from common.migration_messages import MigrationCause, MigrationPhase
from common.network_messages import CreateVnet, NicRequest
from rigs.cluster import Cluster, overlapping_executions
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

UNDERLAY = {"h1": "127.0.0.1", "h2": "127.0.0.1"}


async def two_hosts(cluster: Cluster, client: StratusClient, *scheduler: str) -> None:
    cluster.start_scheduler(*scheduler)
    for i, (host, address) in enumerate(UNDERLAY.items(), start=1):
        cluster.start_agent(
            host, capacity="8c/16g", fault_domain=f"fd-{i}", extra=("--underlay-ip", address)
        )
    await wait_hosts_up(client, 2)


async def on_h1(client: StratusClient, names: list[str], **create: object) -> dict[str, VmInfo]:
    """Create ``names`` on h1 (h2 cordoned meanwhile), running."""
    await client.cordon_host("h2")
    for name in names:
        await client.create_vm(CreateVm(name=name, size="Small", **create))  # type: ignore[arg-type]
    running = await wait_all_running(client, names)
    await client.uncordon_host("h2")
    assert {vm.host for vm in running.values()} == {"h1"}
    return running


async def test_vm_migrate_moves_a_running_vm_to_the_other_host_keeping_its_address(
    cluster: Cluster, client: StratusClient
) -> None:
    await two_hosts(cluster, client)
    await client.create_vnet(CreateVnet(name="front", cidr="10.1.0.0/24"))
    before = (await on_h1(client, ["web-1"], nics=[NicRequest(vnet="front")]))["web-1"]

    started = await client.migrate_vm("web-1")
    assert started.migration is not None and started.migration.target == "h2"
    assert started.migration.cause is MigrationCause.REQUEST
    assert started.migration.attempt == before.generation + 1
    after = await wait_migrated(client, started, timeout_s=30, progress=Progress(io.StringIO()))
    assert (after.host, after.state) == ("h2", VmState.RUNNING)
    assert after.generation == before.generation + 1, "the generation changes once"
    assert after.nics == before.nics, "same address and MAC"
    assert after.migration is None and after.reason == "migrated from h1 to h2 (request)"

    async def h1_empty() -> bool:
        hosts = {h.host_id: h for h in await client.list_hosts()}
        return hosts["h1"].vms == 0 and hosts["h1"].migrations == 0

    await wait_until(h1_empty, timeout_s=10, message="h1 to hold nothing")
    assert overlapping_executions(cluster.execution_log(), killed={}) == []

    with pytest.raises(ApiError) as same:
        await client.migrate_vm("web-1", to="h2")
    assert same.value.code == ErrorCode.INVALID_TARGET
    with pytest.raises(ApiError) as unknown:
        await client.migrate_vm("nope")
    assert unknown.value.code == ErrorCode.NOT_FOUND


async def test_a_drain_moves_three_vms_live(cluster: Cluster, client: StratusClient) -> None:
    await two_hosts(cluster, client, "--drain-parallelism", "3", "--migration-max-per-host", "3")
    names = ["a", "b", "c"]
    before = await on_h1(client, names)

    started = await client.drain_host("h1")
    assert started.draining and started.drain_remaining == 3

    async def drained() -> bool:
        [h1] = [h for h in await client.list_hosts() if h.host_id == "h1"]
        return not h1.draining

    await wait_until(drained, timeout_s=60, interval_s=0.1, message="drain of h1 to finish")
    after = await wait_all_running(client, names, avoid_host="h1")
    for name in names:
        vm = after[name]
        assert vm.host == "h2" and vm.generation == before[name].generation + 1
        assert vm.reason == "migrated from h1 to h2 (drain)", "moved live, not stopped"
    assert overlapping_executions(cluster.execution_log(), killed={}) == []


async def test_a_cancelled_migration_leaves_the_vm_running_where_it_was(
    cluster: Cluster, client: StratusClient
) -> None:
    await two_hosts(cluster, client)
    before = (await on_h1(client, ["slow"]))["slow"]
    started = await client.migrate_vm("slow", to="h2")
    assert started.migration is not None
    attempt = started.migration.attempt
    # At once: the fake driver's migration takes a realistic while, so the cancel comes first.
    cancelled = await client.cancel_migration("slow")
    assert cancelled.migration is None or cancelled.migration.phase is MigrationPhase.CANCELLING

    async def ended() -> bool:
        vm = await client.get_vm("slow")
        return vm.migration is None

    await wait_until(ended, timeout_s=30, message="the attempt to end")
    vm = await client.get_vm("slow")
    assert (vm.host, vm.state, vm.generation) == ("h1", VmState.RUNNING, before.generation)
    assert "cancel requested" in vm.reason

    # The next attempt takes a new number: the cancelled one's is never reused.
    again = await client.migrate_vm("slow", to="h2")
    assert again.migration is not None and again.migration.attempt > attempt
    final = await wait_migrated(client, again, timeout_s=30, progress=Progress(io.StringIO()))
    assert final.host == "h2" and final.generation == again.migration.attempt
    assert overlapping_executions(cluster.execution_log(), killed={}) == []
