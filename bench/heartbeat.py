"""Heartbeat load: the scheduler's CPU and memory with many hosts heartbeating and many VMs.

10,000 simulated hosts (two pool processes) heartbeat at 1 Hz with their full inventories while
100,000 VMs are placed and running; the scheduler's CPU (fraction of one core, psutil over a
window) and RSS are measured once everything is running. Target: <= 50 % of a core, <= 1 GiB.

    .venv/bin/python -m bench.heartbeat [--hosts 10000] [--vms 100000] [--window 20] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import nats
import uvloop

from bench.harness import HOST_LOCAL, CpuWindow, Watch, machine, rig, storage_option, write_result
from bench.loaded import load_cluster

TARGET_CPU_CORE_FRACTION = 0.5
TARGET_RSS_MIB = 1024.0
SETTLE_S = 5.0
"""After the last VM runs, heartbeats settle into their steady 1 Hz rhythm."""


async def run(
    hosts: int,
    vms: int,
    pools: int,
    window_s: float,
    settle_s: float = SETTLE_S,
    host_local: bool = False,
) -> dict[str, Any]:
    with rig() as the_rig:
        nc = await nats.connect(the_rig.nats.url, pending_size=256 * 1024 * 1024)
        watch = Watch()
        await watch.attach(nc)
        pool_args = HOST_LOCAL if host_local else ()
        stages = await load_cluster(the_rig, watch, hosts, vms, pools, pool_args=pool_args)
        await asyncio.sleep(settle_s)  # a benchmark's measuring window, not synchronisation
        windows = {name: CpuWindow(proc.pid) for name, proc in the_rig.procs.items()}
        for window in windows.values():
            window.start()
        await asyncio.sleep(window_s)
        measured = {name: window.stop() for name, window in windows.items()}
        the_rig.check_alive()
        await nc.close()
    scheduler = measured.pop("scheduler")
    return {
        "hosts": hosts,
        "vms": vms,
        "pool_processes": pools,
        "storage": "host-local" if host_local else "replicated",
        "heartbeat_interval_s": 1.0,
        "stages": stages,
        "scheduler": scheduler,
        "pools": measured,
        "target_cpu_core_fraction": TARGET_CPU_CORE_FRACTION,
        "target_rss_mib": TARGET_RSS_MIB,
        "meets_target": scheduler["cpu_core_fraction"] <= TARGET_CPU_CORE_FRACTION
        and scheduler["rss_mib"] <= TARGET_RSS_MIB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.heartbeat", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--pools", type=int, default=2, help="simulated-host pool processes")
    parser.add_argument("--window", type=float, default=20.0, help="measuring window (s)")
    parser.add_argument("--smoke", action="store_true", help="tiny size (CI)")
    parser.add_argument("--name", default="heartbeat")
    storage_option(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.hosts, args.vms, args.window, args.name = 20, 100, 1.0, f"{args.name}-smoke"
    started = machine()
    settle_s = 0.5 if args.smoke else SETTLE_S
    result = uvloop.run(
        run(args.hosts, args.vms, args.pools, args.window, settle_s, args.host_local)
    )
    path = write_result(args.name, result, started)
    sched = result["scheduler"]
    print(
        f"heartbeat load: {args.hosts} hosts at 1 Hz, {args.vms} VMs: scheduler "
        f"{sched['cpu_core_fraction']:.0%} of a core (target <= 50%), RSS {sched['rss_mib']} MiB "
        f"(target <= {TARGET_RSS_MIB:.0f})"
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
