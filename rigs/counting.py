"""A guest that counts, watched from outside: the evidence a live migration kept the VM alive.

Every QEMU process of a VM (``<agents>/<host>/qemu/vms/<vm>/qemu.pid``, beside its
``console.sock``) is followed on its serial console. Typed once into the first copy's shell, a
loop prints ``STRATUS-COUNT n`` every 10 ms (and keeps ``n`` in a file on the OS disk); the
watch records each line's arrival time per process. A migrated VM goes on counting from where
it was in its new process; a restarted one would begin again at 1 (and would have to be typed
at again). Downtime is the time from the source's last line to the destination's first.

The console socket serves one client: while the watch follows a copy, commands for its guest
go through :meth:`CounterWatch.run` (the agent's ``console type`` would wait behind it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from rigs.chaos.consolewatch import alive

COUNT = re.compile(rb"STRATUS-COUNT (\d+)")
COUNT_EVERY_MS = 10
START_COUNTING = (
    b"\n(i=0; while :; do i=$((i+1)); echo STRATUS-C''OUNT $i; echo $i >/var/count; "
    b"usleep %d; done) &\n" % (COUNT_EVERY_MS * 1000)
)
"""Its echo reads ``STRATUS-C''OUNT``: never a count. Each tick forks and execs ``usleep``."""
START_COUNTING_NO_FORK = (
    b"\n(i=0; mkfifo /var/tick 2>/dev/null; exec 3<>/var/tick; while :; do i=$((i+1)); "
    b"echo STRATUS-C''OUNT $i; echo $i >/var/count; read -t %s -u 3 _; done) &\n"
    % str(COUNT_EVERY_MS / 1000).encode()
)
"""The same count without a process per tick: the shell waits in its builtin ``read`` with a
timeout on a FIFO nobody writes. After a pause the guest needs only the timer interrupt, the
shell's wake-up and the console write to print its next line, not a fork, an exec and an exit
(code TCG must translate afresh in a new QEMU process)."""
COUNTERS = {"fork": START_COUNTING, "read": START_COUNTING_NO_FORK}
"""The counting loops by name (``bench.migration --counter``)."""
SCAN_S = 0.05
_marks = itertools.count()


@dataclass(frozen=True, order=True)
class Copy:
    """One QEMU process of a VM, on one host."""

    host: str
    pid: int


@dataclass
class Follow:
    copy: Copy
    writer: asyncio.StreamWriter
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    counts: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class CounterWatch:
    agents_dir: Path
    vm: str
    follows: dict[Copy, Follow] = field(default_factory=dict)
    _tasks: dict[Copy, asyncio.Task[None]] = field(default_factory=dict)
    _scanner: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> CounterWatch:
        self._scanner = asyncio.create_task(self._scan_forever())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        tasks = [t for t in (self._scanner, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for follow in self.follows.values():
            follow.writer.close()

    # ------------------------------------------------------------------ what the watch saw

    def copies(self) -> list[Copy]:
        """Every copy followed so far, in the order first seen."""
        return list(self.follows)

    def live_copies(self) -> list[Copy]:
        return [copy for copy in self.follows if alive(copy.pid)]

    def counts(self, copy: Copy) -> list[tuple[float, int]]:
        return self.follows[copy].counts

    def last_count(self, copy: Copy) -> int | None:
        counts = self.follows[copy].counts if copy in self.follows else []
        return counts[-1][1] if counts else None

    def counting_on(self, host: str) -> Copy | None:
        """The copy on ``host`` that has counted, if any (the newest)."""
        found = [c for c in self.follows if c.host == host and self.follows[c].counts]
        return found[-1] if found else None

    def handover(self, source: Copy, target: Copy) -> tuple[float, int, int]:
        """(downtime_s, last count on the source, first count on the target)."""
        last_t, last_n = self.follows[source].counts[-1]
        first_t, first_n = self.follows[target].counts[0]
        return first_t - last_t, last_n, first_n

    # ------------------------------------------------------------------ acting on the guest

    async def start_counting(self, copy: Copy, loop: bytes = START_COUNTING) -> None:
        """Type the counting ``loop`` into the copy's shell, until it counts."""
        await self._type_until(copy, loop, lambda: bool(self.follows[copy].counts))

    async def run(self, copy: Copy, command: str, timeout_s: float = 30.0) -> str:
        """Run ``command`` in the copy's shell; what it printed (up to its end mark)."""
        mark = f"done{next(_marks)}"
        pattern = re.compile(rf"{mark}-(\d+)".encode())
        start = len(self.follows[copy].lines)

        def answered() -> bool:
            return any(pattern.search(line) for _, line in self.follows[copy].lines[start:])

        typed = f'{command}; echo "{mark}"-$?\n'.encode()
        await self._type_until(copy, typed, answered, timeout_s=timeout_s)
        out = []
        for _, line in self.follows[copy].lines[start:]:
            if pattern.search(line):
                break
            if mark.encode() not in line and not COUNT.search(line):
                out.append(line.decode(errors="replace"))
        return "".join(out)

    async def wait_for(self, check: object, timeout_s: float, what: str) -> None:
        """Until ``check()`` is true (re-checked whenever a line arrives or a copy appears)."""
        assert callable(check)
        deadline = time.monotonic() + timeout_s
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.vm}: {what} not within {timeout_s} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))

    async def _type_until(
        self, copy: Copy, data: bytes, done: object, timeout_s: float = 30.0, every_s: float = 4.0
    ) -> None:
        assert callable(done)
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.vm} on {copy.host}: no answer to {data!r}")
            self.follows[copy].writer.write(data)
            await self.follows[copy].writer.drain()
            with contextlib.suppress(TimeoutError):
                await self.wait_for(done, every_s, "typed")

    # ------------------------------------------------------------------ following

    async def _scan_forever(self) -> None:
        while True:
            self._scan()
            await asyncio.sleep(SCAN_S)  # the watch's own pace, not a synchronisation

    def _scan(self) -> None:
        for pid_file in self.agents_dir.glob(f"*/qemu/vms/{self.vm}/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                copy = Copy(pid_file.parents[3].name, int(pid_file.read_text().strip()))
                if copy not in self._tasks and alive(copy.pid):
                    sock = pid_file.parent / "console.sock"
                    self._tasks[copy] = asyncio.create_task(self._follow(copy, sock))

    async def _follow(self, copy: Copy, sock: Path) -> None:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_unix_connection(str(sock))
                break
            except OSError:
                await asyncio.sleep(0.05)  # the socket is not served yet: QEMU is starting
        else:
            return
        follow = self.follows[copy] = Follow(copy, writer)
        self._changed.set()
        while True:
            line = await reader.readline()
            if not line:
                return
            now = time.time()
            follow.lines.append((now, line))
            if (match := COUNT.search(line)) is not None:
                follow.counts.append((now, int(match.group(1))))
            self._changed.set()
