"""A big simulated cluster for the heartbeat-load and restart benchmarks: hosts in several
simulated-host pool processes, and VMs submitted over the API until all report running."""

from __future__ import annotations

import asyncio
import time

from bench.harness import Rig, Watch, submit_api

POOL_PREFIX = "load"
SUBMIT_CONCURRENCY = 100
"""Requests in flight while loading: enough to keep the scheduler busy, few enough that the
heartbeats of thousands of hosts still get their turn."""
JOIN_SETTLE_S = 10.0
"""At most (1 ms per host): after thousands of hosts joined at once, the time for their first
acks (some came late and fenced hosts without VMs yet) to settle before VMs arrive."""


async def load_cluster(
    the_rig: Rig,
    watch: Watch,
    hosts: int,
    vms: int,
    pools: int,
    *scheduler_args: str,
    pool_args: tuple[str, ...] = (),
) -> dict[str, float]:
    """Start the scheduler and ``pools`` pools of ``hosts`` in all, then place ``vms`` VMs.

    ``watch`` must be attached already. Returns how long each stage took.
    """
    started_s = time.monotonic()
    the_rig.start_scheduler(*scheduler_args)
    for index in range(pools):
        count = hosts // pools + (1 if index < hosts % pools else 0)
        the_rig.start_pool(count, f"{POOL_PREFIX}{index}", *pool_args)
    await watch.until(lambda: len(watch.hosts_up) >= hosts, timeout_s=120 + hosts / 50)
    hosts_up_s = time.monotonic()
    await asyncio.sleep(min(JOIN_SETTLE_S, hosts / 1000))  # a benchmark's setup, not a test
    names = [f"vm-{i:06d}" for i in range(vms)]
    waiting = watch.awaiting_running(names)
    _, errors = await submit_api(the_rig.nats.url, names, SUBMIT_CONCURRENCY)
    if errors:
        raise RuntimeError(f"submissions failed ({len(errors)}): {errors[:5]}")
    await watch.until(lambda: not waiting, timeout_s=120 + vms / 200)
    watch.forget(waiting)
    the_rig.check_alive()
    done_s = time.monotonic()
    return {
        "hosts_up_in_s": round(hosts_up_s - started_s, 1),
        "vms_running_in_s": round(done_s - hosts_up_s, 1),
    }
