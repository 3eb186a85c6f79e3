"""Replicated disks: what a guest's writes cost, and how fast a copy is made.

Parts (``--part``, default all):

- ``writes`` (QEMU): a tiny guest on the QEMU driver with one 64 MiB data disk, host-local or
  replicated on N = 2 and 3 replica servers (``qemu-storage-daemon``, loopback). In the guest,
  ``--batches`` batches of 50 ``O_DIRECT`` 4 KiB writes with busybox ``dd`` (each batch timed
  by the guest's ``time``: 10 ms resolution, so a write's latency is a batch's mean), then
  ``--rounds`` runs of 32 ``O_DIRECT`` 1 MiB writes (throughput). p50/p99 over the batches.
- ``fill`` (no guest): a replica of ``--fill-mib`` MiB, written in full, copied by a second
  replica server from the first one's export (``fill_from``): MiB/s from the set applied to
  the copy ready.
- ``failover`` (QEMU, root: network namespaces): the time from the loss of a replicated VM's
  host to the VM running elsewhere with its disks, over ``--failovers`` rounds
  (bench/diskfailover.py).

    .venv/bin/python -m bench.disks [--part writes|fill|failover|all] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.diskfailover import measure_failover
from bench.harness import machine, percentile, write_result
from common.messages import DiskKind, DiskSpec, VmSpec
from common.replica_messages import ConfigureReplicas, ReplicaRef, ReplicaSpec
from common.resources import Resources
from common.spec_messages import DiskStorage
from common.waiting import poll
from hostagent.drivers.qemu import QemuDriver
from hostagent.drivers.qemuproc import QemuSettings
from hostagent.images import ImageCache
from hostagent.replicaserver import ReplicaServer
from rigs.qemukit import boot_kit

VM = "bench-disk"
DISK = "bench-disk-data"
WRITES_PER_BATCH = 50
REAL = re.compile(r"real\s+(\d+)m\s*([\d.]+)s")
SMALL_WRITES = (
    f"time sh -c 'dd if=/dev/zero of=/dev/vdb bs=4k count={WRITES_PER_BATCH} oflag=direct "
    "2>/dev/null'"
)
LARGE_WRITES = "time sh -c 'dd if=/dev/zero of=/dev/vdb bs=1M count=32 oflag=direct 2>/dev/null'"
_marks = itertools.count()


async def in_guest(driver: QemuDriver, command: str, timeout_s: float = 120.0) -> str:
    """Type ``command`` on the guest's console; what it printed up to an end mark."""
    mark = f"done{next(_marks)}"
    pattern = re.compile(rf"{mark}-(\d+)".encode())
    start = driver.console_read(VM, None, 0).end
    typed = False

    async def answered() -> bytes | None:
        nonlocal typed
        text = driver.console_read(VM, start, 1 << 20).data
        if (found := pattern.search(text)) is not None:
            return text[: found.start()]
        if not typed or mark.encode() not in text:
            await driver.console_write(VM, f'{command}; echo "{mark}"-$?\n'.encode())
            typed = True
        return None

    out = await poll(answered, timeout_s=timeout_s, interval_s=0.2)
    if out is None:
        raise TimeoutError(f"no answer to {command!r}")
    return out.decode(errors="replace").replace("\r", "")


def seconds(output: str) -> float:
    found = REAL.search(output)
    if found is None:
        raise RuntimeError(f"no time in {output!r}")
    return int(found.group(1)) * 60 + float(found.group(2))


@asynccontextmanager
async def servers(workdir: Path, count: int) -> AsyncIterator[list[ReplicaServer]]:
    made = [ReplicaServer(workdir / f"h{i}" / "replicas", "127.0.0.1", 0) for i in range(count)]
    try:
        for server in made:
            await server.open()
        yield made
    finally:
        for server in made:
            await server.shutdown()


async def hold(server: ReplicaServer, size_mib: int, fill: ReplicaRef | None = None) -> float:
    """Have ``server`` hold the disk; seconds until it is ready."""
    spec = ReplicaSpec(disk_id=DISK, vm=VM, kind="data", size_mib=size_mib, fill_from=fill)
    began = time.monotonic()
    await server.apply(ConfigureReplicas(replicas=[spec], digest=f"d{began}"))

    async def ready() -> bool | None:
        return True if not server.statuses() else None

    if await poll(ready, timeout_s=600, interval_s=0.02) is None:
        raise TimeoutError(f"replica not ready: {server.statuses()}")
    return time.monotonic() - began


def ref(server: ReplicaServer, index: int) -> ReplicaRef:
    return ReplicaRef(host=f"h{index}", address=server.address, port=server.port)


async def measure_writes(workdir: Path, copies: int, batches: int, rounds: int) -> dict[str, Any]:
    kit = boot_kit()
    settings = QemuSettings("qemu-system-x86_64", "tcg", kit / "vmlinux", kit / "initramfs.gz",
                            boot_timeout_s=120, nics=False)  # fmt: skip
    root = workdir / f"vm-{copies}" / "qemu"
    images = ImageCache(root / "images", kit)
    driver = QemuDriver(settings, root, images, capacity=Resources(2000, 1024))
    async with servers(workdir / f"copies-{copies}", copies) as held:
        for server in held:
            await hold(server, 64)
        storage = DiskStorage.REPLICATED if copies else DiskStorage.HOST_LOCAL
        data = DiskSpec(disk_id=DISK, kind=DiskKind.DATA, size_mib=64, storage=storage,
                        replicas=[ref(s, i) for i, s in enumerate(held)])  # fmt: skip
        os_disk = DiskSpec(disk_id=f"{VM}-os", kind=DiskKind.OS, image="tiny")
        spec = VmSpec(name=VM, size="Tiny", cpu_milli=1000, mem_mib=96, image="tiny",
                      disks=[os_disk, data])  # fmt: skip
        try:
            await driver.start(spec, 1)
            latencies_ms = []
            for _ in range(batches):
                out = await in_guest(driver, SMALL_WRITES)
                latencies_ms.append(seconds(out) * 1000 / WRITES_PER_BATCH)
            rates = []
            for _ in range(rounds):
                out = await in_guest(driver, LARGE_WRITES)
                rates.append(32 / max(seconds(out), 0.01))
        finally:
            await driver.destroy(VM)
            await driver.close()
    p50_ms, p99_ms = percentile(latencies_ms, 0.5), percentile(latencies_ms, 0.99)
    return {
        "write_4k_ms": {"p50": p50_ms, "p99": p99_ms},
        "write_1m_mib_s": {"p50": percentile(rates, 0.5), "min": min(rates)},
    }


async def measure_fill(workdir: Path, size_mib: int) -> dict[str, Any]:
    async with servers(workdir / "fill", 2) as (source, copy):
        await hold(source, size_mib)
        url = f"nbd://{source.address}:{source.port}/{DISK}"
        writer = await asyncio.create_subprocess_exec(
            "qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {size_mib}M", url,
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await writer.wait() != 0:
            raise RuntimeError(f"qemu-io could not write the source {url}")
        took_s = await hold(copy, size_mib, fill=ref(source, 0))
    return {"fill_mib": size_mib, "fill_s": round(took_s, 3), "fill_mib_s": size_mib / took_s}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-disks-"))
    result: dict[str, Any] = {"smoke": args.smoke}
    try:
        if args.part in ("all", "writes"):
            result["writes"] = {
                label: await measure_writes(workdir, copies, args.batches, args.rounds)
                for label, copies in (("host_local", 0), ("replicated_2", 2), ("replicated_3", 3))
            }
        if args.part in ("all", "fill"):
            result["fill"] = await measure_fill(workdir, args.fill_mib)
        if args.part in ("all", "failover"):
            result["failover"] = await measure_failover(args.failovers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.disks", description=__doc__)
    parser.add_argument("--part", choices=["all", "writes", "fill", "failover"], default="all")
    parser.add_argument("--smoke", action="store_true", help="tiny counts (a test's size)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fill-mib", type=int, default=1024)
    parser.add_argument("--failovers", type=int, default=5, help="host losses (failover part)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.rounds, args.fill_mib, args.failovers = 2, 1, 16, 1
    started = machine()
    result = asyncio.run(run(args))
    path = write_result("disks-smoke" if args.smoke else "disks", result, started)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
