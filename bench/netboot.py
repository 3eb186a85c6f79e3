"""Netboot: time from ``vm create --vnet`` to "the guest answers on its IP", real QEMU (TCG).

One qemu host agent in a network namespace of its own (rigs/netqemu.py: its bridges, DHCP and
rules are built there, never in this machine's namespace), nats-server and the scheduler on the
namespace's hub address. A network is created, then ``--vms`` VMs with a NIC in it, all at once.
For each VM, seconds from its create request to: the scheduler reporting it ``running`` (the
guest printed its readiness marker, after DHCP), and its busybox httpd answering ``GET /`` with
its own name on its private address, from the host's namespace (a prober runs there).

    .venv/bin/python -m bench.netboot [--vms 4] [--boots 2] [--boot-dir KIT] [--smoke]

Needs root (network namespaces), QEMU and the network tools (docs/operations.md). Without
``--boot-dir`` the tiny guest is built first (deploy/images/build-tiny.sh, a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import uvloop

from bench.harness import machine, summary_ms, write_result
from cli.client import StratusClient
from cli.qemukit import ensure_boot_kit
from common.errors import ApiError
from common.messages import CreateVm, VmState
from common.network_messages import CreateVnet, NicRequest
from common.waiting import poll
from rigs.netqemu import NetRig

TIMEOUT_S = 300.0
PROBE = """
import socket, sys, time
want = {ip: name for ip, name in (arg.split("=") for arg in sys.argv[1:])}
while want:
    for ip, name in list(want.items()):
        try:
            with socket.create_connection((ip, 80), timeout=0.2) as s:
                s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                body = s.makefile("rb").read().decode(errors="replace")
        except OSError:
            continue
        if f"stratus-vm {name}" in body:
            print(ip, time.monotonic(), flush=True)
            del want[ip]
    time.sleep(0.05)
"""


async def run(vms: int, boots: int, workdir: Path, kit: Path) -> dict[str, Any]:
    rig = NetRig(workdir, kit)
    try:
        rig.start(["h1"])
        rig.start_agent("h1", boots=boots)
        nc = await nats.connect(rig.url, connect_timeout=5)
        try:
            client = StratusClient(nc, timeout_s=10.0)
            created, running, answered = await measure(client, rig.hosts["h1"].netns, vms)
        finally:
            await nc.close()
    finally:
        rig.stop()
    to_running = [running[name] - created[name] for name in running]
    to_answer = [answered[name] - created[name] for name in answered]
    return {
        "vms": vms,
        "max_concurrent_boots": boots,
        "create_to_running_ms": summary_ms(to_running),
        "create_to_answer_ms": summary_ms(to_answer),
        "answered": len(to_answer),
    }


Times = dict[str, float]


async def measure(client: StratusClient, netns: str, vms: int) -> tuple[Times, Times, Times]:
    """Create the network and the VMs; per VM, when it was asked for, reported running, and
    answered on its address (monotonic seconds: the prober's clock is the same)."""

    async def host_up() -> bool | None:
        try:
            return True if any(h.state == "up" for h in await client.list_hosts()) else None
        except ApiError:  # no scheduler answering yet
            return None

    await poll(host_up, timeout_s=60, interval_s=0.1)
    await client.create_vnet(CreateVnet(name="bench", cidr="10.214.0.0/24"))
    names = [f"nb-{index}" for index in range(vms)]
    created: Times = {}
    for name in names:
        created[name] = time.monotonic()
        await client.create_vm(CreateVm(name=name, size="Tiny", nics=[NicRequest(vnet="bench")]))
    ips = {(await client.get_vm(name)).nics[0].ip: name for name in names}
    probe = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", PROBE,
        *(f"{ip}={name}" for ip, name in ips.items()), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    answered: Times = {}
    running: Times = {}

    async def read_probe() -> None:
        assert probe.stdout is not None
        async for line in probe.stdout:
            ip, at_s = line.decode().split()
            answered[ips[ip]] = float(at_s)

    async def done() -> bool | None:
        for name in names:
            if name not in running and (await client.get_vm(name)).state is VmState.RUNNING:
                running[name] = time.monotonic()
        return True if len(running) == len(answered) == vms else None

    reader = asyncio.create_task(read_probe())
    try:
        await poll(done, timeout_s=TIMEOUT_S, interval_s=0.05)
    finally:
        reader.cancel()
        if probe.returncode is None:
            probe.kill()
        await probe.wait()
    return created, running, answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.netboot", description=__doc__)
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--boots", type=int, default=2, help="the agent's concurrent boots")
    parser.add_argument("--boot-dir", type=Path, help="a boot kit (default: built afresh)")
    parser.add_argument("--smoke", action="store_true", help="one VM, results as netboot-smoke")
    args = parser.parse_args(argv)
    vms = 1 if args.smoke else args.vms
    started = machine()
    with tempfile.TemporaryDirectory(prefix="stratus-netboot-") as tmp:
        kit = ensure_boot_kit(args.boot_dir or Path(tmp) / "kit").resolve()
        result = uvloop.run(run(vms, args.boots, Path(tmp), kit))
    path = write_result("netboot-smoke" if args.smoke else "netboot", result, started)
    print(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0 if result["answered"] == vms else 1


if __name__ == "__main__":
    sys.exit(main())
