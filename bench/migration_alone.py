"""The downtime floor: the counting guest migrated by QEMU alone, without Stratus.

``bench.migration --part qemu-alone`` (root, QEMU, netns): two network namespaces joined by a
veth underlay, as in the ``downtime`` part; the guest's QEMU is started in one of them with the
very command line the QEMU driver uses (hostagent/drivers/qemuproc.py ``qemu_args``, no NIC), the
destination's in the other with ``-incoming defer`` added. Then only QMP, by hand: the
destination ``migrate-incoming``, the source ``migrate`` (``downtime-limit`` as the driver's
first passes, no bandwidth cap) and, the instant the destination's ``MIGRATION`` event says
``completed``, ``cont`` to the destination. The OS disk is one qcow2 overlay both processes open
(shared storage: QEMU hands the image over at the switchover), so no disk is copied.

The downtime is measured as the ``downtime`` part measures it (rigs/counting.py: the source's
last count line on its console to the destination's first), so the difference between the two
parts is what the control plane adds; QEMU's own ``downtime`` (its pause, as ``query-migrate``
reports it) is kept beside it, with when each step happened (the source's last line, its
``STOP`` event, the destination's ``completed``, ``cont``, its first line). Before each move, a
control: the same QEMU stopped for ``IN_PLACE_PAUSE_S`` and let run again (its translated code
kept), the longest gap between the lines around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import percentile
from common.messages import DiskKind, DiskSpec, VmSpec
from hostagent.drivers import qemuproc
from hostagent.drivers.qmp import JsonObject, QmpClient
from rigs.chaos.netns import Network, clean_leftovers
from rigs.counting import COUNTERS, Copy, CounterWatch

VM = "alone"
DOWNTIME_LIMIT_MS = 16
"""QEMU's ``downtime-limit``: what the driver gives the first passes (qemuflows.py)."""
NO_CAP_BYTES_S = 1 << 40
BOOT_S = 180.0
MOVE_S = 120.0
IN_PLACE_PAUSE_S = 0.005
"""The control's pause: about QEMU's own for this guest (3-10 ms)."""
EVENTS: JsonObject = {"capabilities": [{"capability": "events", "state": True}]}


@dataclass
class Process:
    """One QEMU of the guest: its host (namespace label), directory and monitor."""

    host: str
    files: qemuproc.VmFiles
    pid: int
    qmp: QmpClient
    events: asyncio.Queue[tuple[float, str, JsonObject]] = field(default_factory=asyncio.Queue)
    """Every QMP event with the wall-clock time it arrived (the counter watch's clock)."""

    @property
    def copy(self) -> Copy:
        return Copy(self.host, self.pid)


@dataclass
class AloneRig:
    workdir: Path
    kit: Path
    mem_mib: int
    accel: str = "tcg"
    network: Network = field(default_factory=Network)
    netns: dict[str, str] = field(default_factory=dict)
    address: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    @property
    def agents_dir(self) -> Path:
        """Laid out as the agents' (``<host>/qemu/vms/<vm>/``), for the counter watch."""
        return self.workdir / "hosts"

    def spec(self) -> VmSpec:
        disk = DiskSpec(disk_id=f"{VM}-os", kind=DiskKind.OS, image="tiny")
        return VmSpec(
            name=VM, size="Tiny", cpu_milli=1000, mem_mib=self.mem_mib, image="tiny", disks=[disk]
        )

    def start(self) -> None:
        clean_leftovers()
        for host in ("h1", "h2"):
            self.netns[host] = self.network.add_namespace(host)
        self.address["h1"], self.address["h2"] = self.network.join(
            self.netns["h1"], self.netns["h2"]
        )
        overlay = self.disk
        overlay.parent.mkdir(parents=True, exist_ok=True)
        backing = str(self.kit / "tiny.qcow2")
        create = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing]
        subprocess.run([*create, str(overlay)], check=True, timeout=30)

    @property
    def disk(self) -> Path:
        return self.workdir / "disks" / f"{VM}-os.qcow2"

    async def launch(self, host: str, *, incoming: bool) -> Process:
        settings = qemuproc.QemuSettings(
            qemu_binary="qemu-system-x86_64",
            accel=self.accel,  # type: ignore[arg-type]  # tcg with options, as --accel allows
            kernel=self.kit / "vmlinux",
            initramfs=self.kit / "initramfs.gz",
            netns=self.netns[host],
            nics=False,
        )
        files = qemuproc.VmFiles(self.agents_dir / host / "qemu" / "vms" / VM)
        files.dir.mkdir(parents=True, exist_ok=True)
        extra = ("-incoming", "defer") if incoming else ()
        pid = await qemuproc.launch(settings, self.spec(), files, [self.disk], extra)
        events: asyncio.Queue[tuple[float, str, JsonObject]] = asyncio.Queue()
        qmp = await QmpClient.connect(
            files.qmp, on_event=lambda event, data: events.put_nowait((time.time(), event, data))
        )
        process = Process(host, files, pid, qmp, events)
        self.processes.append(process)
        return process

    async def quit(self, process: Process) -> None:
        with contextlib.suppress(Exception):  # it may be gone already
            await process.qmp.execute("quit")
        await process.qmp.close()
        if not await qemuproc.wait_exit(process.pid, self.workdir, 10):
            qemuproc.kill(process.pid)
        self.processes.remove(process)

    async def stop(self) -> None:
        for process in list(self.processes):
            await self.quit(process)
        self.network.close()


async def _until_event(process: Process, status: str, timeout_s: float) -> dict[str, float]:
    """Until the process's ``MIGRATION`` event says ``status`` (``failed`` raises); when each
    event came (``STOP``, ``RESUME`` and ``MIGRATION`` by status), the last of a kind kept."""
    seen: dict[str, float] = {}
    async with asyncio.timeout(timeout_s):
        while True:
            at, event, data = await process.events.get()
            seen[str(data.get("status", event)) if event == "MIGRATION" else event] = at
            if event != "MIGRATION":
                continue
            if data.get("status") == status:
                return seen
            if data.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"migration {data.get('status')} on {process.host}")


async def _listen(dst: Process, address: str) -> int:
    await dst.qmp.execute("migrate-set-capabilities", EVENTS)
    await dst.qmp.execute("migrate-incoming", {"uri": f"tcp:{address}:0"})
    info = await dst.qmp.execute("query-migrate")
    assert isinstance(info, dict)
    (socket,) = info["socket-address"]
    return int(socket["port"])


async def migrate(src: Process, dst: Process, address: str) -> dict[str, float]:
    """QEMU's migration from ``src`` to ``dst``, ``cont`` at once; when each step happened
    (wall clock) and QEMU's own downtime (ms)."""
    port = await _listen(dst, address)
    await src.qmp.execute("migrate-set-capabilities", EVENTS)
    parameters: JsonObject = {"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": NO_CAP_BYTES_S}
    await src.qmp.execute("migrate-set-parameters", parameters)
    await src.qmp.execute("migrate", {"uri": f"tcp:{address}:{port}"})
    arrived = (await _until_event(dst, "completed", MOVE_S))["completed"]
    await dst.qmp.execute("cont")
    resumed = time.time()
    stopped = (await _until_event(src, "completed", MOVE_S)).get("STOP", 0.0)
    info = await src.qmp.execute("query-migrate")
    qemu_ms = int(info.get("downtime", 0)) if isinstance(info, dict) else 0
    return {"stopped": stopped, "arrived": arrived, "resumed": resumed, "qemu_ms": qemu_ms}


async def _pause_in_place(process: Process, watch: CounterWatch) -> float:
    """The control: ``stop``, ``IN_PLACE_PAUSE_S``, ``cont`` of the same QEMU (whose translated
    code stays); the longest gap between the counter's lines around it (ms)."""
    began = time.time()
    await process.qmp.execute("stop")
    await asyncio.sleep(IN_PLACE_PAUSE_S)  # the pause itself, as QEMU's migration pauses
    await process.qmp.execute("cont")
    resumed = time.time()
    count = len(watch.counts(process.copy))
    await watch.wait_for(lambda: len(watch.counts(process.copy)) >= count + 5, 30, "counts")
    times = [t for t, _ in watch.counts(process.copy) if began - 0.1 <= t <= resumed + 1]
    return _ms(max(b - a for a, b in itertools.pairwise(times)))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def _boot(rig_: AloneRig, watch: CounterWatch, loop: bytes) -> Process:
    first = await rig_.launch("h1", incoming=False)
    await first.qmp.execute("cont")
    deadline = time.monotonic() + BOOT_S
    while qemuproc.READY_MARKER not in qemuproc.read_serial(first.files):
        if time.monotonic() > deadline:
            raise TimeoutError(f"guest not booted: {qemuproc.serial_tail(first.files)}")
        await asyncio.sleep(0.2)  # the boot's own pace
    await watch.wait_for(lambda: first.copy in watch.follows, 30, "console")
    await watch.run(first.copy, "true")
    await watch.start_counting(first.copy, loop)
    return first


async def _move(
    rig_: AloneRig, watch: CounterWatch, src: Process
) -> tuple[Process, dict[str, Any]]:
    await watch.wait_for(lambda: len(watch.counts(src.copy)) >= 20, 30, "counting before")
    in_place_ms = await _pause_in_place(src, watch)
    target = "h2" if src.host == "h1" else "h1"
    dst = await rig_.launch(target, incoming=True)
    await watch.wait_for(lambda: dst.copy in watch.follows, 30, "destination's console")
    started = time.monotonic()
    at = await migrate(src, dst, rig_.address[target])
    total_s = time.monotonic() - started
    await watch.wait_for(lambda: bool(watch.counts(dst.copy)), 30, "counts on the destination")
    downtime_s, last, first = watch.handover(src.copy, dst.copy)
    last_t, first_t = watch.counts(src.copy)[-1][0], watch.counts(dst.copy)[0][0]
    await rig_.quit(src)
    return dst, {
        "from": src.host,
        "to": target,
        "downtime_ms": round(downtime_s * 1000, 1),
        "qemu_downtime_ms": at["qemu_ms"],
        "in_place_ms": in_place_ms,
        "steps_ms": {
            "last_line_to_stop": _ms(at["stopped"] - last_t),
            "stop_to_arrived": _ms(at["arrived"] - at["stopped"]),
            "arrived_to_cont": _ms(at["resumed"] - at["arrived"]),
            "cont_to_first_line": _ms(first_t - at["resumed"]),
        },
        "total_s": round(total_s, 3),
        "last_count": last,
        "first_count": first,
        "restarted": not last - 2 <= first <= last + 50,
    }


async def qemu_alone_part(
    workdir: Path, kit: Path, moves: int, mem_mib: int, accel: str = "tcg", counter: str = "fork"
) -> dict[str, Any]:
    """``moves`` migrations of a counting guest of ``mem_mib`` by QEMU alone (module docstring)."""
    rig_ = AloneRig(workdir, kit, mem_mib, accel)
    results = []
    try:
        rig_.start()
        async with CounterWatch(rig_.agents_dir, VM) as watch:
            here = await _boot(rig_, watch, COUNTERS[counter])
            for _ in range(moves):
                here, result = await _move(rig_, watch, here)
                results.append(result)
    finally:
        await rig_.stop()
    downtimes = [r["downtime_ms"] for r in results]
    in_place = [r["in_place_ms"] for r in results]
    first_lines = [r["steps_ms"]["cont_to_first_line"] for r in results]
    return {
        "mem_mib": mem_mib,
        "accel": accel,
        "counter": counter,
        "moves": len(results),
        "downtime_ms": {
            "p50": percentile(downtimes, 0.5),
            "p99": percentile(downtimes, 0.99),
            "max": max(downtimes),
        },
        "qemu_downtime_ms": {"p50": percentile([r["qemu_downtime_ms"] for r in results], 0.5)},
        "in_place_ms": {"p50": percentile(in_place, 0.5), "max": max(in_place)},
        "cont_to_first_line_ms": {"p50": percentile(first_lines, 0.5), "max": max(first_lines)},
        "restarts": sum(r["restarted"] for r in results),
        "per_move": results,
    }
