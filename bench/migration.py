"""Live migration: how long a guest stops, how long a move takes, how fast a drain empties a host.

Three parts (``--part``, default all):

- ``downtime`` (root, QEMU): the scheduler and two qemu agents, each in a network namespace of
  its own joined by a veth underlay (rigs/netqemu.py); one guest per size counts on its serial
  console every 10 ms (rigs/counting.py) and is moved back and forth with ``vm migrate``
  ``--moves`` times. Per move: the downtime (the source's last count → the destination's first,
  seen from outside on the two QEMU processes' consoles) and the total time (request → the VM
  runs on the destination with no migration under way). Goal: downtime p99 <= 100 ms.
- ``drain`` (root, QEMU): ``--drain-vms`` counting guests on one host, ``host drain``; the time
  until every one runs on the other host (goal <= 15 s for 4), and that none restarted.
- ``qemu-alone`` (root, QEMU): the floor the control plane cannot beat: the same counting guest
  (Tiny) moved back and forth ``--moves`` times by two QEMU processes started by hand with the
  driver's command line, ``migrate`` and ``cont`` over QMP, no Stratus (bench/migration_alone.py),
  measured with the same counter watch; QEMU's own ``downtime`` beside it.
- ``fleet`` (no root): simulated hosts (fake driver, 64c/256g each): ``--fleet-vms`` VMs of the
  benchmarks' size mix (about 1.7 cores and 3 GiB each) on ``--fleet-hosts`` hosts (32 hold
  1,000), as many idle hosts join, the full ones are drained at once; the time until every VM
  runs elsewhere, and no host declared down. Each migration takes the fake driver's modelled
  time (0.5 s + memory at 1 GiB/s), ``migration_max_per_host`` (2) at once per host.

    .venv/bin/python -m bench.migration [--part all|downtime|qemu-alone|drain|fleet] [--moves 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import uvloop

from bench.harness import LOGS_ENV, Watch, machine, percentile, rig, submit_api, write_result
from bench.migration_alone import qemu_alone_part
from cli.client import StratusClient
from common.errors import ApiError
from common.messages import CreateVm, VmInfo, VmState
from rigs.counting import COUNTERS, START_COUNTING, Copy, CounterWatch
from rigs.netqemu import NetRig
from rigs.qemukit import boot_kit

TARGET_DOWNTIME_P99_MS = 100.0
TARGET_DRAIN_S = 15.0
SIZES = {"Tiny": (1000, 96), "Mem256": (1000, 256), "Mem512": (1000, 512)}
"""Guest sizes moved by the downtime part (cpu millicores, memory MiB)."""
MOVE_TIMEOUT_S = 120.0
PARTS = ("downtime", "qemu-alone", "drain", "fleet")


async def _settled(client: StratusClient, name: str, host: str, timeout_s: float) -> VmInfo:
    deadline = time.monotonic() + timeout_s
    while True:
        vm = await client.get_vm(name)
        if vm.state is VmState.RUNNING and vm.migration is None and vm.host == host:
            return vm
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not running on {host}: {vm.state} on {vm.host}")
        await asyncio.sleep(0.02)  # polling the API at the bench's own pace


async def _counting_copy(watch: CounterWatch, host: str, seen: set[Copy]) -> Copy:
    """The copy on ``host``, not one of ``seen`` (a move's own), once it counts."""

    def arrived() -> Copy | None:
        fresh = [c for c in watch.copies() if c.host == host and c not in seen]
        return next((c for c in fresh if watch.counts(c)), None)

    await watch.wait_for(lambda: arrived() is not None, 60, f"counts on {host}")
    copy = arrived()
    assert copy is not None
    return copy


async def _move(
    client: StratusClient, watch: CounterWatch, name: str, source: Copy, target: str
) -> dict[str, Any]:
    await watch.wait_for(lambda: len(watch.counts(source)) >= 20, 30, "counting before")
    seen = set(watch.copies())
    started = time.monotonic()
    await client.migrate_vm(name, to=target)
    await _settled(client, name, target, MOVE_TIMEOUT_S)
    total_s = time.monotonic() - started
    arrived = await _counting_copy(watch, target, seen)
    downtime_s, last, first = watch.handover(source, arrived)
    return {
        "copy": arrived,
        "last_line_at": watch.counts(source)[-1][0],
        "first_line_at": watch.counts(arrived)[0][0],
        "from": source.host,
        "to": target,
        "downtime_ms": round(downtime_s * 1000, 1),
        "total_s": round(total_s, 3),
        "last_count": last,
        "first_count": first,
        "restarted": not last - 2 <= first <= last + 50,
    }


async def downtime_part(
    rig_: NetRig, client: StratusClient, moves: int, sizes: list[str], counter: str = "fork"
) -> dict[str, Any]:
    per_size: dict[str, Any] = {}
    for size in sizes:
        name = f"mig-{size.lower()}"
        await client.create_vm(CreateVm(name=name, size=size))
        await _settled(client, name, "h1", MOVE_TIMEOUT_S)
        results = []
        async with CounterWatch(rig_.agents_dir, name) as watch:
            here = await _counting_copy_started(watch, COUNTERS[counter])
            for index in range(moves if size == "Tiny" else max(2, moves // 5)):
                target = "h2" if index % 2 == 0 else "h1"
                moved = await _move(client, watch, name, here, target)
                here = moved.pop("copy")
                results.append(moved)
        await client.delete_vm(name)
        downtimes = [r["downtime_ms"] for r in results]
        totals = [r["total_s"] for r in results]
        per_size[size] = {
            "mem_mib": SIZES[size][1],
            "moves": len(results),
            "downtime_ms": {
                "p50": percentile(downtimes, 0.5),
                "p99": percentile(downtimes, 0.99),
                "max": max(downtimes),
            },
            "total_s": {"p50": percentile(totals, 0.5), "max": max(totals)},
            "restarts": sum(r["restarted"] for r in results),
            "per_move": results,
        }
    tiny = per_size["Tiny"]["downtime_ms"]["p99"]
    return {
        "counter": counter,
        "sizes": per_size,
        "target_downtime_p99_ms": TARGET_DOWNTIME_P99_MS,
        "meets_target": tiny <= TARGET_DOWNTIME_P99_MS,
    }


async def drain_part(rig_: NetRig, client: StratusClient, vms: int) -> dict[str, Any]:
    names = [f"drain-{i}" for i in range(1, vms + 1)]
    await client.cordon_host("h2")
    for name in names:
        await client.create_vm(CreateVm(name=name, size="Tiny"))
    for name in names:
        await _settled(client, name, "h1", MOVE_TIMEOUT_S)
    await client.uncordon_host("h2")
    async with contextlib.AsyncExitStack() as stack:
        watches = {
            n: await stack.enter_async_context(CounterWatch(rig_.agents_dir, n)) for n in names
        }
        sources, seen = {}, {}
        for name, watch in watches.items():
            sources[name] = await _counting_copy_started(watch)
            seen[name] = set(watch.copies())
        started = time.monotonic()
        await client.drain_host("h1")
        for name in names:
            await _settled(client, name, "h2", MOVE_TIMEOUT_S)
        drain_s = time.monotonic() - started
        handovers = {}
        for name, watch in watches.items():
            arrived = await _counting_copy(watch, "h2", seen[name])
            downtime_s, last, first = watch.handover(sources[name], arrived)
            handovers[name] = {
                "downtime_ms": round(downtime_s * 1000, 1),
                "restarted": not last - 2 <= first <= last + 50,
            }
    return {
        "vms": vms,
        "drain_s": round(drain_s, 2),
        "target_s": TARGET_DRAIN_S,
        "meets_target": drain_s <= TARGET_DRAIN_S,
        "restarts": sum(h["restarted"] for h in handovers.values()),
        "per_vm": handovers,
    }


async def _counting_copy_started(watch: CounterWatch, loop: bytes = START_COUNTING) -> Copy:
    await watch.wait_for(lambda: bool(watch.copies()), 30, "console")
    copy = watch.copies()[0]
    await watch.run(copy, "true")  # the guest's shell answers
    await watch.start_counting(copy, loop)
    await watch.wait_for(lambda: len(watch.counts(copy)) >= 20, 30, "counting")
    return copy


async def qemu_parts(
    parts: set[str], moves: int, drain_vms: int, sizes: list[str], counter: str = "fork"
) -> dict[str, Any]:
    kit = boot_kit()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="stratus-bench-mig-") as tmp:
        rig_ = NetRig(Path(tmp), kit, sizes=SIZES)
        try:
            rig_.start(["h1", "h2"])
            rig_.start_agent("h1")
            rig_.start_agent("h2")
            nc = await nats.connect(rig_.url, connect_timeout=5)
            client = StratusClient(nc, timeout_s=10.0)
            await _hosts_up(client, 2)
            if "downtime" in parts:
                result["downtime"] = await downtime_part(rig_, client, moves, sizes, counter)
            if "drain" in parts:
                result["drain"] = await drain_part(rig_, client, drain_vms)
            await nc.close()
        finally:
            rig_.stop()
            keep = os.environ.get(LOGS_ENV)
            if keep:
                skip = shutil.ignore_patterns("*.sock", "*.qcow2", "*.img", "nats")
                shutil.copytree(tmp, Path(keep) / "migration", ignore=skip, dirs_exist_ok=True)
    return result


async def _hosts_up(client: StratusClient, count: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(ApiError):  # the scheduler may not answer yet
            if len([h for h in await client.list_hosts() if h.state == "up"]) >= count:
                return
        if time.monotonic() > deadline:
            raise TimeoutError("hosts not up")
        await asyncio.sleep(0.2)  # polling at the bench's own pace


async def fleet_part(hosts: int, vms: int) -> dict[str, Any]:
    with rig() as the_rig:
        the_rig.start_scheduler()
        nc = await nats.connect(the_rig.nats.url)
        watch = Watch()
        await watch.attach(nc)
        the_rig.start_pool(hosts, "full")
        await watch.until(lambda: len(watch.hosts_up) >= hosts, timeout_s=60)
        names = [f"fleet-{i:05d}" for i in range(vms)]
        waiting = watch.awaiting_running(names)
        _, errors = await submit_api(the_rig.nats.url, names, 100)
        if errors:
            raise RuntimeError(f"submissions failed: {errors[:5]}")
        try:
            await watch.until(lambda: not waiting, timeout_s=300)
        except TimeoutError:
            raise RuntimeError(
                f"{len(waiting)} of {vms} VMs never ran: do {vms} VMs fit on {hosts} hosts?"
            ) from None
        the_rig.start_pool(hosts, "idle")
        await watch.until(lambda: len(watch.hosts_up) >= 2 * hosts, timeout_s=60)
        full = [f"full-{i:05d}" for i in range(1, hosts + 1)]
        moved = watch.awaiting_running(names, elsewhere_than=frozenset(full))
        client = StratusClient(nc, timeout_s=10.0)
        started = time.monotonic()
        for host in full:
            await client.drain_host(host)
        await watch.until(lambda: not moved, timeout_s=600)
        drain_s = time.monotonic() - started
        the_rig.check_alive()
        await nc.close()
        return {
            "hosts_drained": hosts,
            "vms": vms,
            "drain_s": round(drain_s, 2),
            "vms_per_s": round(vms / drain_s, 1),
            "hosts_declared_down": len(watch.hosts_dead),
        }


async def _alone(moves: int, accel: str, counter: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stratus-bench-alone-") as tmp:
        mem_mib = SIZES["Tiny"][1]
        return await qemu_alone_part(Path(tmp), boot_kit(), moves, mem_mib, accel, counter)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.migration", description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", *PARTS), default="all")
    parser.add_argument("--moves", type=int, default=10, help="moves of the smallest guest")
    parser.add_argument("--drain-vms", type=int, default=4)
    parser.add_argument("--fleet-hosts", type=int, default=32)
    parser.add_argument("--fleet-vms", type=int, default=1000)
    parser.add_argument("--accel", default="tcg", help="qemu-alone: QEMU's -accel (tcg,...)")
    parser.add_argument(
        "--counter",
        choices=tuple(COUNTERS),
        default="fork",
        help="the guest's counting loop: a usleep process per tick, or the shell's read -t",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--name", default="migration")
    args = parser.parse_args(argv)
    if args.smoke:
        args.moves, args.drain_vms, args.fleet_hosts, args.fleet_vms = 2, 2, 2, 20
        args.name = f"{args.name}-smoke"
    parts = set(PARTS) if args.part == "all" else {args.part}
    started = machine()
    result: dict[str, Any] = {}
    if parts & {"downtime", "drain"}:
        sizes = ["Tiny"] if args.smoke else list(SIZES)
        real = qemu_parts(parts, args.moves, args.drain_vms, sizes, args.counter)
        result.update(uvloop.run(real))
    if "qemu-alone" in parts:
        result["qemu-alone"] = uvloop.run(_alone(args.moves, args.accel, args.counter))
    if "fleet" in parts:
        result["fleet"] = uvloop.run(fleet_part(args.fleet_hosts, args.fleet_vms))
    path = write_result(args.name, result, started)
    _print(result)
    print(f"results: {path}")
    failed = [part for part in result.values() if part.get("meets_target") is False]
    return 1 if failed and not args.smoke else 0


def _print(result: dict[str, Any]) -> None:
    if "downtime" in result:
        print(f"counter: {result['downtime']['counter']}")
    for size, row in result.get("downtime", {}).get("sizes", {}).items():
        d, t = row["downtime_ms"], row["total_s"]
        print(
            f"migrate {size} ({row['mem_mib']} MiB) x{row['moves']}: downtime p50 {d['p50']} ms "
            f"p99 {d['p99']} ms max {d['max']} ms; total p50 {t['p50']} s; restarts "
            f"{row['restarts']}"
        )
    if alone := result.get("qemu-alone"):
        d = alone["downtime_ms"]
        print(
            f"qemu alone Tiny x{alone['moves']} ({alone['accel']}): downtime p50 {d['p50']} ms "
            f"p99 {d['p99']} ms max {d['max']} ms; qemu's own p50 "
            f"{alone['qemu_downtime_ms']['p50']} ms; cont to first line p50 "
            f"{alone['cont_to_first_line_ms']['p50']} ms; paused in place p50 "
            f"{alone['in_place_ms']['p50']} ms; restarts {alone['restarts']}"
        )
    if drain := result.get("drain"):
        print(
            f"drain of {drain['vms']} real VMs: {drain['drain_s']} s, restarts {drain['restarts']}"
        )
    if fleet := result.get("fleet"):
        print(
            f"fleet drain of {fleet['vms']} VMs off {fleet['hosts_drained']} hosts: "
            f"{fleet['drain_s']} s ({fleet['vms_per_s']} VMs/s), hosts down "
            f"{fleet['hosts_declared_down']}"
        )


if __name__ == "__main__":
    sys.exit(main())
