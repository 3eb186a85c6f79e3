"""How long does a ``/metrics`` scrape take with a big cluster in the state?

Builds a state directly (no NATS, no agents): HOSTS hosts in 4 regions, about 10 VMs per host
in every VM state, runtimes with heartbeat ages. Then times ``SchedulerMetrics.render`` and a
``GET /metrics`` through aiohttp on a loopback port.

    .venv/bin/python bench/metrics_scrape.py [--hosts 1000] [--vms-per-host 10] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from common.clock import Clock, SystemClock
from common.config import AZURE_SIZES
from common.ids import HostId, VmName
from common.messages import VmState
from common.resources import Resources
from scheduler.shell.metrics import Observer, SchedulerMetrics
from scheduler.state.cluster import ClusterState
from scheduler.state.model import HostRecord, HostRuntime, VmRecord

STATES = [VmState.RUNNING] * 8 + [VmState.PENDING, VmState.STOPPED]


class Source:
    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.clock: Clock = SystemClock()
        self.observers: list[Observer] = []

    def committed(self) -> ClusterState | None:
        return self.state


def build_state(hosts: int, vms_per_host: int, seed: int = 1) -> ClusterState:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    now_s = time.monotonic()
    state = ClusterState()
    for h in range(hosts):
        host = HostId(f"host-{h:05d}")
        state.hosts[host] = HostRecord(
            host_id=host,
            region=f"region-{h % 4}",
            fault_domain=f"fd-{h % 3}",
            capacity=Resources(64_000, 262_144),
            up=h % 97 != 0,
            cordoned=h % 50 == 0,
        )
        state.runtimes[host] = HostRuntime(last_seen_s=now_s - rng.random() * 2)
        for v in range(vms_per_host):
            size = rng.choice(AZURE_SIZES)
            vm_state = rng.choice(STATES)
            placed = vm_state is VmState.RUNNING
            state.add_vm(
                VmRecord(
                    name=VmName(f"vm-{h:05d}-{v:02d}"),
                    size=size.name,
                    cpu_milli=size.cpu_milli,
                    mem_mib=size.mem_mib,
                    image="tiny",
                    region=None,
                    availability_set=None,
                    state=vm_state,
                    host=host if placed else None,
                    generation=1,
                    created_at=now,
                    updated_at=now,
                )
            )
    return state


async def time_http(metrics: SchedulerMetrics, rounds: int) -> list[float]:
    app = web.Application()

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    timings = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(rounds):
                start = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    await response.read()
                timings.append(time.perf_counter() - start)
    finally:
        await runner.cleanup()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--vms-per-host", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    state = build_state(args.hosts, args.vms_per_host)
    metrics = SchedulerMetrics(Source(state))
    body = metrics.render()
    direct = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        metrics.render()
        direct.append(time.perf_counter() - start)
    http = asyncio.run(time_http(metrics, args.rounds))
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(
        f"hosts={len(state.hosts)} vms={len(state.vms)} series={samples} bytes={len(body)}\n"
        f"render   median={statistics.median(direct) * 1000:.1f} ms "
        f"max={max(direct) * 1000:.1f} ms\n"
        f"GET /metrics median={statistics.median(http) * 1000:.1f} ms "
        f"max={max(http) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
