"""End to end: submit VMs to a real scheduler with simulated hosts until all report running.

Real nats-server, the scheduler process, one simulated-host pool process. VMs are submitted as
fast as the scheduler takes them (at most ``--concurrency`` requests in flight), first over the
NATS request/reply API, then over the durable JetStream jobs stream. Measured: VMs/s from the
first submission until every VM's ``running`` event arrived, and per-request latency (API: the
reply, which comes after commit; jobs: the PubAck, durable in JetStream). Target: >= 5,000 VMs/s.
Each phase also reports its CPU per VM above the processes' idle CPU and the VMs/s that cost
allows at most (``ceiling_vms_per_s``): on every core, and for the scheduler alone on one.
``--part bus-alone`` runs the API phase with stand-ins that only pass its messages (the floor).

Every VM has a NIC in one of ``--vnets`` networks (default 2 networks of a /16, VMs dealt
round-robin; 0: no networks), as the issue's figure asks: the scheduler hands out addresses and
sends each host its network configuration ahead of its starts, and the simulated hosts apply
it (their network backend keeps the accounts) before they start the VMs.

    .venv/bin/python -m bench.e2e [--hosts 1000] [--vms 20000] [--vnets 2] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

import nats
import uvloop
from nats.aio.client import Client

from bench.harness import (
    HOST_LOCAL,
    SIZE_MIX,
    CpuWindow,
    Rig,
    Watch,
    bounded,
    machine,
    rig,
    storage_option,
    summary_ms,
    write_result,
)
from common import codec, subjects
from common.messages import CreateVm
from common.network_messages import CreateVnet, NicRequest

TARGET_VMS_PER_S = 5000.0
HOST_CAPACITY = "128c/512g"
"""Room for both phases' VMs (2 x 20,000 of about 1.7 cores) on 1,000 hosts."""


def _request_body(name: str, index: int, vnets: int) -> bytes:
    nics = [NicRequest(vnet=vnet_name(index % vnets))] if vnets else []
    return codec.encode(CreateVm(name=name, size=SIZE_MIX[index % len(SIZE_MIX)], nics=nics))


def vnet_name(n: int) -> str:
    return f"bench-{n}"


async def _create_vnets(url: str, count: int) -> None:
    nc = await nats.connect(url)
    try:
        for n in range(count):
            body = CreateVnet(name=vnet_name(n), cidr=f"10.{n}.0.0/16")
            msg = await nc.request(subjects.VNET_CREATE, codec.encode(body), timeout=10)
            reply = codec.vnet_reply.decode(msg.data)
            if reply.error is not None:
                raise RuntimeError(f"network {body.name}: {reply.error.code} {reply.error.detail}")
    finally:
        await nc.close()


async def _phase(
    the_rig: Rig,
    watch: Watch,
    label: str,
    count: int,
    concurrency: int,
    via_jobs: bool,
    vnets: int = 0,
) -> dict[str, Any]:
    nc = await nats.connect(the_rig.nats.url, pending_size=256 * 1024 * 1024)
    js = nc.jetstream()
    names = [f"{label}-{i:06d}" for i in range(count)]
    errors: list[str] = []

    async def submit_api(name: str, index: int) -> None:
        msg = await nc.request(subjects.VM_CREATE, _request_body(name, index, vnets), timeout=60)
        reply = codec.vm_reply.decode(msg.data)
        if reply.error is not None:
            errors.append(f"{name}: {reply.error.code} {reply.error.detail}")

    async def submit_job(name: str, index: int) -> None:
        subject = subjects.job_subject(subjects.VM_CREATE)
        body = _request_body(name, index, vnets)
        await js.publish(subject, body, timeout=60, headers={"Nats-Msg-Id": name})

    waiting = watch.awaiting_running(names)
    cpus = {name: CpuWindow(pid) for name, pid in _pids(the_rig).items()}
    for window in cpus.values():
        window.start()
    start_s = time.monotonic()
    latencies_s = await bounded(names, concurrency, submit_job if via_jobs else submit_api)
    accepted_s = time.monotonic() - start_s
    try:
        await watch.until(lambda: not waiting, timeout_s=60 + count / 100)
    except TimeoutError:
        states = Counter(watch.vm_state.get(name, "unseen") for name in names)
        raise RuntimeError(f"{label}: not all VMs running: {dict(states)}") from None
    watch.forget(waiting)
    done_s = max(watch.running_at[name] for name in names) - start_s
    to_running = [watch.running_at[name] - start_s for name in names]
    await nc.close()
    vms_per_s = count / done_s
    cpu = {name: window.stop() for name, window in cpus.items()}
    return {
        "via": "jetstream jobs stream" if via_jobs else "nats request/reply api",
        "vms": count,
        "concurrency": concurrency,
        "accepted_in_s": round(accepted_s, 2),
        "all_running_in_s": round(done_s, 2),
        "vms_per_s": round(vms_per_s, 1),
        "request_latency": summary_ms(latencies_s),
        "submit_to_running_s_max": round(max(to_running), 2),
        "errors": errors[:10],
        "scheduler": cpu["scheduler"],
        "others": {name: used for name, used in cpu.items() if name != "scheduler"},
        "cpu_s_per_1000_vms": {name: _per_1000(used, count) for name, used in cpu.items()},
        "target_vms_per_s": TARGET_VMS_PER_S,
        "meets_target": vms_per_s >= TARGET_VMS_PER_S,
    }


def _pids(the_rig: Rig) -> dict[str, int]:
    pids = {name: proc.pid for name, proc in the_rig.procs.items()}
    return pids | {"nats-server": the_rig.nats.process.pid, "bench client": os.getpid()}


def _per_1000(used: dict[str, float], vms: int) -> float:
    """CPU-seconds of a process per 1,000 VMs over a phase (all it did meanwhile counts)."""
    return round(used["cpu_core_fraction"] * used["window_s"] * 1000 / vms, 4)


def _with_ceiling(phase: dict[str, Any], idle: dict[str, float]) -> dict[str, Any]:
    """The phase with its CPU per VM above each process's idle CPU (what the VMs cost, the
    heartbeats left out), and the VMs/s that cost allows at most: all processes spread without
    a loss over every core of the machine, and the scheduler alone on one core."""
    used = {name: w["cpu_core_fraction"] for name, w in phase["others"].items()}
    used["scheduler"] = phase["scheduler"]["cpu_core_fraction"]
    rate = phase["vms_per_s"]
    every_ms = max(sum(used.values()) - sum(idle.values()), 1e-9) / rate * 1000
    scheduler_ms = max(used["scheduler"] - idle["scheduler"], 1e-9) / rate * 1000
    cores = os.cpu_count() or 1
    return phase | {
        "cpu_ms_per_vm_above_idle": {
            "all": round(every_ms, 3),
            "scheduler": round(scheduler_ms, 3),
        },
        "ceiling_vms_per_s": {
            "all_cores": round((cores - sum(idle.values())) / every_ms * 1000),
            "scheduler_one_core": round((1 - idle["scheduler"]) / scheduler_ms * 1000),
        },
    }


async def _every_host_up(the_rig: Rig, hosts: int) -> tuple[Client, Watch]:
    """A connection watching the events, once every host was reported up."""
    nc = await nats.connect(the_rig.nats.url, pending_size=256 * 1024 * 1024)
    watch = Watch()
    await watch.attach(nc)
    await watch.until(lambda: len(watch.hosts_up) >= hosts, timeout_s=60 + hosts / 50)
    the_rig.check_alive()
    return nc, watch


async def _idle(the_rig: Rig, window_s: float = 3.0) -> dict[str, float]:
    """Each process's CPU (fraction of a core) with every host up and no VM on its way: the
    heartbeats, which the phases' figures include too."""
    cpus = {name: CpuWindow(pid) for name, pid in _pids(the_rig).items()}
    for window in cpus.values():
        window.start()
    await asyncio.sleep(window_s)
    return {name: window.stop()["cpu_core_fraction"] for name, window in cpus.items()}


async def run(
    hosts: int, vms: int, concurrency: int, vnets: int = 2, host_local: bool = False
) -> dict[str, Any]:
    with rig() as the_rig:
        the_rig.start_scheduler()
        pool_args = HOST_LOCAL if host_local else ()
        the_rig.start_pool(hosts, "e2e", *pool_args, capacity=HOST_CAPACITY)
        nc, watch = await _every_host_up(the_rig, hosts)
        await _create_vnets(the_rig.nats.url, vnets)
        idle = await _idle(the_rig)
        phases = [
            await _phase(the_rig, watch, "api", vms, concurrency, via_jobs=False, vnets=vnets),
            await _phase(the_rig, watch, "job", vms, concurrency, via_jobs=True, vnets=vnets),
        ]
        the_rig.check_alive()
        await nc.close()
    return {
        "hosts": hosts,
        "networks": vnets,
        "storage": "host-local" if host_local else "replicated",
        "idle_cpu_core_fraction": idle,
        "phases": [_with_ceiling(phase, idle) for phase in phases],
    }


async def run_alone(hosts: int, vms: int, concurrency: int, vnets: int) -> dict[str, Any]:
    """The API phase with the message-passing stand-ins (bench/e2e_alone.py) in place of the
    scheduler and the pool."""
    with rig() as the_rig:
        for role, name in (("scheduler", "scheduler"), ("hosts", "pool-e2e")):
            args = ["-m", "bench.e2e_alone", role, "--nats", the_rig.nats.url]
            the_rig.spawn(name, [*args, "--hosts", str(hosts)])
        nc, watch = await _every_host_up(the_rig, hosts)
        idle = await _idle(the_rig)
        phase = await _phase(the_rig, watch, "api", vms, concurrency, via_jobs=False, vnets=vnets)
        the_rig.check_alive()
        await nc.close()
    return {
        "part": "bus-alone",
        "hosts": hosts,
        "networks": vnets,
        "idle_cpu_core_fraction": idle,
        "phases": [_with_ceiling(phase, idle)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument(
        "--vnets", type=int, default=2, help="/16 networks the VMs have a NIC in (0: none)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny size (CI)")
    parser.add_argument("--name", default="e2e", help="results file name")
    parser.add_argument(
        "--part",
        choices=["stratus", "bus-alone"],
        default="stratus",
        help="bus-alone: the API phase's messages passed by stand-ins (bench/e2e_alone.py)",
    )
    storage_option(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.hosts, args.vms, args.concurrency = 10, 60, 20
        args.name = f"{args.name}-smoke"
    started = machine()
    if args.vnets and 2 * args.vms > args.vnets * 65533:
        parser.error(f"2 x {args.vms} vms do not fit {args.vnets} /16 networks")
    if args.part == "bus-alone":
        args.name = args.name.replace("e2e", "e2e-bus-alone", 1)
        result = uvloop.run(run_alone(args.hosts, args.vms, args.concurrency, args.vnets))
    else:
        result = uvloop.run(
            run(args.hosts, args.vms, args.concurrency, args.vnets, args.host_local)
        )
    path = write_result(args.name, result, started)
    for phase in result["phases"]:
        lat = phase["request_latency"]
        print(
            f"e2e {phase['via']}: {phase['vms']} VMs on {args.hosts} hosts "
            f"({args.vnets} networks, {result.get('storage', 'no')} disks), all running in "
            f"{phase['all_running_in_s']} s = {phase['vms_per_s']} VMs/s "
            f"(target >= {TARGET_VMS_PER_S:.0f}); latency p50 {lat['p50_ms']} ms "
            f"p99 {lat['p99_ms']} ms; scheduler cpu {phase['scheduler']['cpu_core_fraction']}; "
            f"at most {phase['ceiling_vms_per_s']['all_cores']} VMs/s on every core at its "
            f"{phase['cpu_ms_per_vm_above_idle']['all']} CPU-ms per VM"
        )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
