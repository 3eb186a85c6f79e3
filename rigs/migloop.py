"""Migrate a counting, forking guest back and forth between two QEMU drivers, each a "host" in a
network namespace of its own, and check every move: a debugging rig (root, QEMU, netns), not a
test.

    python -m rigs.migloop --runs 20 [--compare] [--cap 16] [--nic] [--drop-caches]
                           [--busy] [--pad-kib N] [--accel tcg,thread=single]

Each round the destination prepares, the source sends (at ``--cap`` MiB/s), and then:

- with ``--compare``, the guest's RAM on the handed-over source and on the destination (loaded,
  not yet running) is dumped (QMP ``pmemsave``) and compared page by page; a round whose pages
  differ starts over with a freshly booted guest (that one's memory is corrupt);
- the destination is let run: its console must show ``CHECK_COUNTS`` more counts and none of
  ``CRASH`` within ``CHECK_S``.

``--pad-kib`` overrides hostagent/drivers/qemuproc.py ``TCG_RAM_PAD_KIB`` (0: RAM a multiple of
256 KiB, as before the fix). Prints one line per round and a summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from common.errors import DriverError
from common.messages import DiskKind, DiskSpec, VmSpec
from common.network_messages import NicSpec
from common.resources import Resources
from hostagent.accel import Accel
from hostagent.drivers import qemuproc
from hostagent.drivers.qemu import QemuDriver
from hostagent.drivers.qmp import JsonObject, QmpClient
from hostagent.images import ImageCache
from hostagent.network import bridge_name
from rigs import qemukit
from rigs.chaos.netns import Network, clean_leftovers, run_ip

VM = "loop-1"
MEM_MIB = 96
VNI = 77
PAGE = 4096
CRASH = re.compile(rb"general protection|BUG|Oops|Kernel panic|segfault|invalid opcode")
COUNT = re.compile(rb"STRATUS-COUNT (\d+)")
COUNTER = b"\n(i=0; while :; do i=$((i+1)); echo STRATUS-C''OUNT $i; usleep 10000; done) &\n"
"""The whole-stack test's loop (rigs/counting.py): a fork and an exec every 10 ms."""
BUSY = b"\n(j=0; while :; do j=$((j+1)); done) &\n"
"""A loop that writes the same few pages of its own memory and never leaves its process."""
MARK = (
    b"\necho os-mark > /marker && echo data-mark | dd of=/dev/vdb bs=512 conv=fsync 2>/dev/null"
    b" && sync && echo 3 > /proc/sys/vm/drop_caches\n"
)
"""What the whole-stack test typed just before the move."""
CHECK_COUNTS = 200
CHECK_S = 30.0


def spec(nic: bool) -> VmSpec:
    disks = [
        DiskSpec(disk_id=f"{VM}-os", kind=DiskKind.OS, image="tiny"),
        DiskSpec(disk_id=f"{VM}-data", kind=DiskKind.DATA, size_mib=64),
    ]
    nics = [
        NicSpec(index=0, vnet="n", vni=VNI, mac="52:54:00:aa:bb:01", ip="10.214.77.5",
                prefix_len=24, gateway="10.214.77.1"),
    ]  # fmt: skip
    return VmSpec(
        name=VM, size="Tiny", cpu_milli=1000, mem_mib=MEM_MIB, image="tiny", disks=disks,
        nics=nics if nic else [],
    )  # fmt: skip


def make_driver(kit: Path, root: Path, netns: str, args: argparse.Namespace) -> QemuDriver:
    settings = qemuproc.QemuSettings(
        qemu_binary="qemu-system-x86_64", accel=cast(Accel, args.accel), kernel=kit / "vmlinux",
        initramfs=kit / "initramfs.gz", boot_timeout_s=120, netns=netns, nics=args.nic,
    )  # fmt: skip
    cache = ImageCache(root / "images", kit)
    return QemuDriver(settings, root, cache, capacity=Resources(4000, 1024))


def serial(driver: QemuDriver) -> bytes:
    path = driver.files(VM).serial
    return path.read_bytes() if path.exists() else b""


async def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return False


async def guard_qmp(
    driver: QemuDriver, command: str, arguments: JsonObject | None = None
) -> object:
    qmp = await QmpClient.connect(driver.files(VM).guard)
    try:
        return await qmp.execute(command, arguments, timeout_s=60)
    finally:
        await qmp.close()


async def loaded(driver: QemuDriver) -> None:
    """Until the destination's QEMU holds the whole state (the source completes first)."""
    for _ in range(600):
        info = await guard_qmp(driver, "query-migrate")
        if isinstance(info, dict) and info.get("status") == "completed":
            return
        await asyncio.sleep(0.05)


async def pages_that_differ(src: QemuDriver, dst: QemuDriver) -> list[int]:
    await loaded(dst)
    dumps = []
    for driver in (src, dst):
        path = driver.files(VM).dir / "ram.dump"
        await guard_qmp(
            driver, "pmemsave", {"val": 0, "size": MEM_MIB << 20, "filename": str(path)}
        )
        dumps.append(path.read_bytes())
        path.unlink()
    a, b = dumps
    pages = range(len(a) // PAGE)
    return [n for n in pages if a[n * PAGE : (n + 1) * PAGE] != b[n * PAGE : (n + 1) * PAGE]]


async def finish(dst: QemuDriver) -> None:
    await loaded(dst)
    for _ in range(100):
        try:
            await dst.finish_incoming(VM)
            return
        except DriverError:
            await asyncio.sleep(0.1)


async def move(src: QemuDriver, dst: QemuDriver, address: str, args: argparse.Namespace,
               generation: int) -> tuple[str, str]:  # fmt: skip
    """One migration and its check; (verdict, detail)."""
    if args.drop_caches:
        await src.console_write(VM, MARK)
        await asyncio.sleep(0.3)
    endpoint = await dst.prepare_incoming(spec(args.nic), generation, address)
    await src.migrate_out(VM, endpoint, max_downtime_ms=100, max_bandwidth_mib_s=args.cap)
    if args.compare and (differ := await pages_that_differ(src, dst)):
        return "RAM-DIFFERS", f"{len(differ)} pages differ: {differ[:12]}"
    await finish(dst)
    start = len(serial(dst))

    def settled() -> bool:
        text = serial(dst)[start:]
        return bool(CRASH.search(text)) or len(COUNT.findall(text)) >= CHECK_COUNTS

    await wait_for(settled, CHECK_S)
    text = serial(dst)[start:]
    if (crash := CRASH.search(text)) is not None:
        return "CRASH", text[crash.start() : crash.start() + 1500].decode(errors="replace")
    if VM not in {vm.name for vm in dst.inventory()}:
        return "GONE", text[-800:].decode(errors="replace")
    counts = len(COUNT.findall(text))
    return ("ok" if counts >= CHECK_COUNTS else "STALLED"), f"{counts} counts"


async def boot(driver: QemuDriver, args: argparse.Namespace, generation: int) -> None:
    await driver.start(spec(args.nic), generation)
    await driver.console_write(VM, COUNTER)
    if args.busy:
        await driver.console_write(VM, BUSY)
    await wait_for(lambda: len(COUNT.findall(serial(driver))) > 20, 60)


async def rounds(drivers: list[QemuDriver], addresses: list[str], args: argparse.Namespace
                 ) -> list[str]:  # fmt: skip
    results: list[str] = []
    generation, at = 1, 0  # ``at``: the driver the guest runs on
    await boot(drivers[0], args, generation)
    for n in range(args.runs):
        src, dst = drivers[at], drivers[1 - at]
        began = time.monotonic()
        try:
            verdict, detail = await move(src, dst, addresses[1 - at], args, generation + 1)
        except Exception as exc:  # a rig: report and stop
            verdict, detail = "ERROR", repr(exc)
        results.append(verdict)
        took = time.monotonic() - began
        print(
            f"round {n + 1} {verdict} {took:.1f}s {'' if verdict == 'ok' else detail}", flush=True
        )
        generation += 1
        if verdict == "RAM-DIFFERS":
            for driver in drivers:
                await driver.destroy(VM)
            generation, at = generation + 1, 0
            await boot(drivers[0], args, generation)
            continue
        if verdict != "ok":
            print(serial(dst)[-3000:].decode(errors="replace"), flush=True)
            break
        await src.destroy(VM)
        at = 1 - at
    return results


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hostagent.drivers.qemumigrate").setLevel(logging.INFO)
    if args.pad_kib is not None:
        qemuproc.TCG_RAM_PAD_KIB = args.pad_kib
    kit = qemukit.boot_kit()
    clean_leftovers()
    work = Path(tempfile.mkdtemp(prefix="migloop-"))
    network = Network()
    drivers: list[QemuDriver] = []
    try:
        hosts = [network.add_namespace("h1"), network.add_namespace("h2")]
        addresses = list(network.join(*hosts))
        for netns in hosts:
            if args.nic:
                run_ip("ip", "link", "add", bridge_name(VNI), "type", "bridge", netns=netns)
                run_ip("ip", "link", "set", bridge_name(VNI), "up", netns=netns)
            drivers.append(make_driver(kit, work / netns, netns, args))
        results = await rounds(drivers, addresses, args)
    finally:
        for driver in drivers:
            for vm in driver.inventory():
                with contextlib.suppress(DriverError):
                    await driver.destroy(vm.name)
            await driver.close()
        network.close()
    settings = " ".join(f"{k}={v}" for k, v in sorted(vars(args).items()))
    bad = len(results) - results.count("ok")
    print(f"SUMMARY {settings} rounds={len(results)} ok={results.count('ok')} bad={bad}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--nic", action="store_true")
    parser.add_argument("--drop-caches", action="store_true")
    parser.add_argument("--accel", default="tcg")
    parser.add_argument("--cap", type=int, default=0, help="MiB/s; 0: no cap")
    parser.add_argument("--compare", action="store_true", help="compare guest RAM (pmemsave)")
    parser.add_argument("--busy", action="store_true", help="also a busy loop in the guest")
    parser.add_argument("--pad-kib", type=int, default=None, help="TCG_RAM_PAD_KIB (0: none)")
    sys.exit(asyncio.run(main(parser.parse_args())))
