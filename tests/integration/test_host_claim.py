"""One agent per host id, end to end: two real agent processes with the same host id."""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from cli.client import StratusClient
from common import codec, subjects
from common.messages import CreateVm, HostEvent, HostState
from hostagent.__main__ import EXIT_HOST_ID_REFUSED
from rigs.cluster import Cluster
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def test_a_second_agent_with_a_live_host_id_exits_having_executed_nothing(
    cluster: Cluster, client: StratusClient, nc: Client
) -> None:
    refusals: list[HostEvent] = []

    async def on_event(msg: Msg) -> None:
        event = codec.event.decode(msg.data)
        if isinstance(event, HostEvent) and "refused" in event.reason:
            refusals.append(event)

    await nc.subscribe(subjects.host_event("h1"), cb=on_event)
    cluster.start_scheduler()
    cluster.start_agent("h1")
    await wait_hosts_up(client, 1)
    names = ["web-1", "web-2"]
    for name in names:
        await client.create_vm(CreateVm(name=name, size="Small"))
    before = await wait_all_running(client, names)

    second_dir = cluster.workdir / "second"
    cluster.start_agent("h1", key="h1-second", extra=("--data-dir", str(second_dir)))
    second = cluster.agents["h1-second"]
    await wait_until(lambda: second.poll() is not None, timeout_s=15, message="second exits")
    assert second.returncode == EXIT_HOST_ID_REFUSED
    output = (cluster.workdir / "agent-h1-second.log").read_text()
    assert "host id h1 is held by another agent" in output
    # It never executed a command: its audit log holds nothing.
    audit = second_dir / "h1" / "executions.jsonl"
    assert not audit.exists() or audit.read_text() == ""
    await wait_until(lambda: bool(refusals), message="a host event saying so")
    # The holder and its VMs carry on untouched.
    assert cluster.agents["h1"].poll() is None
    after = await wait_all_running(client, names)
    assert {n: (v.host, v.generation) for n, v in after.items()} == {
        n: (v.host, v.generation) for n, v in before.items()
    }
    (host,) = await client.list_hosts()
    assert host.state is HostState.UP


async def test_an_agent_restarted_at_once_takes_its_host_id_back(
    cluster: Cluster, client: StratusClient
) -> None:
    cluster.start_scheduler()
    cluster.start_agent("h1")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="web-1", size="Small"))
    await wait_all_running(client, ["web-1"])
    cluster.kill_agent("h1")
    restarted_at = time.time()
    cluster.start_agent("h1")  # a new boot id while the old one was heard moments ago

    def started_again() -> bool:
        rows = cluster.execution_log()
        return any(
            row["event"] == "running" and float(str(row["t"])) > restarted_at for row in rows
        )

    await wait_until(started_again, timeout_s=15, message="the restarted agent runs web-1")
    assert cluster.agents["h1"].poll() is None


async def test_a_simulated_host_whose_id_is_held_is_retired_and_the_pool_serves_on(
    cluster: Cluster, client: StratusClient
) -> None:
    cluster.start_scheduler()
    cluster.start_agent("sim-00002")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="web-1", size="Small"))
    await wait_all_running(client, ["web-1"])
    pool_dir = cluster.workdir / "pool"
    extra = ("--simulate", "3", "--data-dir", str(pool_dir))
    cluster.start_agent("sim-00001", key="pool", extra=extra)
    log = cluster.workdir / "agent-pool.log"
    await wait_until(
        lambda: "host retired host_id=sim-00002" in log.read_text(),
        timeout_s=15,
        message="the pool retires the host whose id is held",
    )
    await wait_hosts_up(client, 3)
    assert cluster.agents["pool"].poll() is None
    audit = pool_dir / "sim-pool" / "executions.jsonl"
    lines = audit.read_text().splitlines() if audit.exists() else []
    assert not [line for line in lines if "sim-00002" in line]
