"""The operator surface end to end: a scheduler (in this process, with its HTTP server), a real
agent process and a real nats-server. ``/metrics`` and ``/v1/usage`` over HTTP, usage over NATS
(what ``stratus usage`` calls), and the usage history surviving a scheduler restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from cli.client import StratusClient
from cli.usage import to_csv
from common.config import SchedulerConfig
from common.messages import CreateVm, VmRef, VmState
from common.natsserver import NatsServer
from common.usage_messages import UsageQuery, UsageReply
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.core.contract import Op
from scheduler.shell.app import SchedulerApp
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@asynccontextmanager
async def scheduler(nats_server: NatsServer, db: Path) -> AsyncIterator[SchedulerApp]:
    config = SchedulerConfig(
        nats_url=nats_server.url, db_path=str(db), http_listen="127.0.0.1:0", **FAST_TIMINGS
    )
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        yield app
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def check_usage_over_http(http: aiohttp.ClientSession, base: str) -> None:
    async with http.get(f"{base}/v1/usage") as response:
        assert response.status == 200
        usage = msgspec.json.decode(await response.read(), type=UsageReply).usage
    assert usage is not None
    [vm] = usage.vms
    assert (vm.name, vm.size, vm.hours, vm.cost) == ("web-1", "Small", 1, 0.06)
    offset = f"{base}/v1/usage?since=2020-01-01T01:00:00+01:00"  # "+" arrives as a space
    async with http.get(offset) as response:
        assert response.status == 200
        assert (await response.json())["usage"]["since"] == "2020-01-01T00:00:00Z"
    async with http.get(f"{base}/v1/usage", params={"since": "yesterday"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_metrics_and_usage_over_http_and_nats(
    nats_server: NatsServer, nc: Client, tmp_path: Path, cluster: Cluster
) -> None:
    cluster.start_agent("h1", capacity="4c/8g")
    async with scheduler(nats_server, tmp_path / "s.db") as app, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{app.http_port}"
        state = app.committed()  # what /metrics and /v1 read: the last committed step
        assert state is not None
        await wait_until(lambda: "h1" in state.hosts, timeout_s=15, message="agent registered")
        reply = await app.submit(Op.CREATE, CreateVm(name="web-1", size="Small"))
        assert reply.vm is not None
        await wait_until(
            lambda: state.vms["web-1"].state is VmState.RUNNING,  # type: ignore[index]
            timeout_s=15,
            message="web-1 running",
        )
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            scraped = samples(await response.text())
        assert scraped[("stratus_vms", (("size", "Small"), ("state", "running")))] == 1
        assert scraped[("stratus_hosts", (("region", "local"), ("state", "up")))] == 1
        assert scraped[("stratus_region_allocated_cpu_milli", (("region", "local"),))] == 1000
        assert scraped[("stratus_region_capacity_cpu_milli", (("region", "local"),))] == 4000
        ok = (("outcome", "ok"), ("source", "http"))
        assert scraped[("stratus_requests_total", ok)] == 1
        assert scraped[("stratus_placement_latency_seconds_count", ())] == 1

        await check_usage_over_http(http, base)

        # The same report over NATS, as `stratus usage` gets it; an empty window is empty.
        client = StratusClient(nc, timeout_s=5)
        over_nats = await client.usage(UsageQuery())
        assert [(v.name, v.hours) for v in over_nats.vms] == [("web-1", 1)]
        later = datetime.now(UTC) + timedelta(hours=2)
        empty = await client.usage(UsageQuery(since=later - timedelta(hours=1), until=later))
        assert empty.vms == [] and empty.hours == 0
        assert to_csv(over_nats).splitlines()[1].split(",")[2:5] == ["web-1", "Small", "1"]

        await app.submit(Op.DELETE, VmRef(name="web-1"))
        await wait_until(
            lambda: state.vms["web-1"].state is VmState.DELETED,  # type: ignore[index]
            timeout_s=15,
            message="web-1 deleted",
        )
    # A new scheduler process on the same store still bills the VM's hour, once.
    async with scheduler(nats_server, tmp_path / "s.db") as again:
        report = await again.usage(UsageQuery())
        assert report.usage is not None
        assert [(v.name, v.hours) for v in report.usage.vms] == [("web-1", 1)]
