"""The QEMU part's external observer: is a guest executing, seen from outside the system.

Every QEMU process the agents start is found by its files (``<host>/qemu/vms/<vm>/qemu.pid``
and ``console.sock``); the watch connects to its serial console (a socket QEMU serves; the
agent connects to it only to type, which nothing does here), and once the guest has booted it
starts a loop in the guest's shell that prints a tick every TICK_S. The copy a live migration
makes on another host is followed too: it never boots, it goes on ticking with the loop it
brought along. A tick can only come from a guest
whose vCPU runs: paused (QMP ``stop``), frozen or killed, it prints nothing. The ticks' arrival
times, per QEMU process, are the evidence; neither the agents' audit logs nor the scheduler are
asked. Two processes of one VM ticking at the same time are two executing copies.

The process itself is read from /proc: alive, not a zombie, not stopped (``T``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rigs.chaos.faults import Violation

TICK_S = 0.25
TICK = b"STRATUS-TICK"
START_TICKS = b"\n(while :; do echo STRATUS-T''ICK; sleep 0.25; done) &\n"
"""Typed into the guest's shell; its echo reads ``STRATUS-T''ICK``, never a tick."""
READY = b"STRATUS-READY"
SCAN_S = 0.25
RETYPE_S = 8.0
"""A booted guest that has not ticked this long after typing (typed while it was paused, and
the serial FIFO dropped it) is typed at again."""
SPAN_GAP_S = 1.5
"""Two ticks of one process at most this far apart: it executed all the time between them. (A
process paused and resumed shows a longer gap: the span breaks, nothing is invented.)"""


@dataclass(frozen=True, order=True)
class Copy:
    """One QEMU process of a VM."""

    vm: str
    host: str
    pid: int


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, T, Z, ...); None when there is no such
    process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


@dataclass
class ConsoleWatch:
    agents_dir: Path
    ticks: dict[Copy, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Wall-clock arrival time of every tick, per copy."""
    stopped_seen: set[Copy] = field(default_factory=set)
    """Copies found SIGSTOPped (state T) at some scan: the system never pauses that way."""
    _watched: dict[Copy, asyncio.Task[None]] = field(default_factory=dict)
    _typed_at: dict[Copy, float] = field(default_factory=dict)

    async def run(self) -> None:
        """Scan for QEMU processes and follow their consoles until cancelled."""
        try:
            while True:
                self.scan()
                await asyncio.sleep(SCAN_S)  # the watch's own pace, not a synchronisation
        finally:
            for task in self._watched.values():
                task.cancel()
            await asyncio.gather(*self._watched.values(), return_exceptions=True)

    def copies(self) -> dict[Copy, Path]:
        """Every QEMU process the agents' directories name and that is alive, with its VM
        directory."""
        found = {}
        for pid_file in self.agents_dir.glob("*/qemu/vms/*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                vm_dir = pid_file.parent
                copy = Copy(vm_dir.name, vm_dir.parents[2].name, pid)
                if alive(pid):
                    found[copy] = vm_dir
        return found

    def scan(self) -> None:
        for copy, vm_dir in self.copies().items():
            if process_state(copy.pid) == "T":
                self.stopped_seen.add(copy)
            task = self._watched.get(copy)
            if task is None or task.done():
                self._watched[copy] = asyncio.create_task(self._follow(copy, vm_dir))

    async def _follow(self, copy: Copy, vm_dir: Path) -> None:
        """Read the console; (re)type the tick loop while the guest does not tick."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(vm_dir / "console.sock"))
        except OSError:
            return  # gone meanwhile (destroyed), or not serving yet: the next scan retries
        try:
            while alive(copy.pid):
                if self._needs_typing(copy) and _booted(vm_dir):
                    writer.write(START_TICKS)
                    await writer.drain()
                    self._typed_at[copy] = time.time()
                try:
                    line = await asyncio.wait_for(reader.readline(), timeout=1.0)
                except TimeoutError:
                    continue
                if not line:
                    return
                if line.strip() == TICK:
                    self.ticks[copy].append(time.time())
        except OSError:
            return
        finally:
            writer.close()

    def _needs_typing(self, copy: Copy) -> bool:
        typed = self._typed_at.get(copy)
        last = self.ticks[copy][-1] if self.ticks.get(copy) else None
        now = time.time()
        if typed is None:
            return True
        return (last is None or last < typed) and now - typed > RETYPE_S

    def save(self, t0: float) -> Path:
        """Every copy's ticks (seconds since ``t0``) as JSON beside the agents' logs."""
        path = self.agents_dir.parent / "console-ticks.json"
        rows = [
            {"vm": c.vm, "host": c.host, "pid": c.pid, "ticks": [round(t - t0, 3) for t in ts]}
            for c, ts in sorted(self.ticks.items())
        ]
        path.write_text(json.dumps(rows, indent=1))
        return path

    def last_tick(self, copy: Copy) -> float | None:
        ticks = self.ticks.get(copy)
        return ticks[-1] if ticks else None


def _booted(vm_dir: Path) -> bool:
    try:
        return READY in (vm_dir / "serial.log").read_bytes()
    except OSError:
        return False


def spans(ticks: list[float], gap_s: float = SPAN_GAP_S) -> list[tuple[float, float]]:
    """The intervals a copy surely executed: runs of ticks no more than ``gap_s`` apart."""
    found: list[tuple[float, float]] = []
    for t in sorted(ticks):
        if found and t - found[-1][1] <= gap_s:
            found[-1] = (found[-1][0], t)
        else:
            found.append((t, t))
    return found


def two_running_copies(ticks: dict[Copy, list[float]]) -> list[Violation]:
    """Two processes of one VM executing at the same moment (their tick spans overlap)."""
    by_vm: dict[str, list[Copy]] = defaultdict(list)
    for copy in ticks:
        by_vm[copy.vm].append(copy)
    found = []
    for vm, copies in sorted(by_vm.items()):
        for i, first in enumerate(sorted(copies)):
            for second in sorted(copies)[i + 1 :]:
                overlap = _overlap(spans(ticks[first]), spans(ticks[second]))
                if overlap is not None:
                    where = f"{first.host}/pid {first.pid} and {second.host}/pid {second.pid}"
                    detail = f"vm={vm} t={overlap[0]:.3f}..{overlap[1]:.3f} on {where}"
                    found.append(Violation("two_copies_executing", detail))
    return found


def _overlap(
    a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> tuple[float, float] | None:
    for start_a, end_a in a:
        for start_b, end_b in b:
            if start_a <= end_b and start_b <= end_a:
                return max(start_a, start_b), min(end_a, end_b)
    return None
