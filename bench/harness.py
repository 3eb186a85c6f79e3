"""What the end-to-end benchmarks share: processes, the event watch, statistics and results.

Every process a benchmark starts (nats-server, scheduler, simulated-host pools) is a child of
:class:`Rig`, on loopback and random ports, and is stopped when the rig closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
from nats.aio.client import Client
from nats.aio.msg import Msg

from common import codec, procs, subjects
from common.messages import CreateVm, HostEvent, VmEvent
from common.natsserver import NatsServer, start_nats_server

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS_ENV = "STRATUS_BENCH_RESULTS"
"""Set to a directory to write results there instead (the smoke tests do)."""
LOGS_ENV = "STRATUS_BENCH_LOGS"
"""Set to a directory to keep the processes' logs there."""
SIZE_MIX = ("ExtraSmall", "Small", "Small", "Medium", "Medium", "Large")
"""The sizes benchmark VMs cycle through (about 1.7 cores and 3 GiB on average)."""


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms, default=0.0), 2),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, result: dict[str, Any], started: dict[str, Any]) -> Path:
    """``bench/results/<name>.json`` (or under ``$STRATUS_BENCH_RESULTS``); ``started`` is
    :func:`machine` taken at the start."""
    results_dir = Path(os.environ.get(RESULTS_ENV) or RESULTS_DIR)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    body = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": started,
        "note": "a shared 2-core machine: other work ran at the same time (see load average)",
        **result,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


@dataclass
class Rig:
    """The processes of one benchmark run."""

    workdir: Path
    nats: NatsServer
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = procs.spawn([sys.executable, *args], self.workdir / f"{name}.log", env=env)
        self.procs[name] = proc
        return proc

    def start_scheduler(self, *extra: str, name: str = "scheduler") -> subprocess.Popen[bytes]:
        db = str(self.workdir / "scheduler.db")
        args = ["-m", "scheduler", "--nats", self.nats.url, "--db", db, "--log-level", "WARNING"]
        return self.spawn(name, [*args, *extra])

    def start_pool(
        self, count: int, prefix: str, *extra: str, capacity: str = "64c/256g"
    ) -> subprocess.Popen[bytes]:
        args = ["-m", "hostagent", "--nats", self.nats.url, "--simulate", str(count)]
        args += ["--simulate-prefix", prefix, "--capacity", capacity, "--log-level", "WARNING"]
        args += ["--data-dir", str(self.workdir / "agents")]
        return self.spawn(f"pool-{prefix}", [*args, *extra])

    def kill(self, name: str) -> None:
        """kill -9 and reap."""
        procs.kill(self.procs.pop(name), timeout_s=10)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")

    def close(self) -> None:
        procs.stop_all(self.procs.values(), timeout_s=10)
        self.procs.clear()
        self.nats.stop()


HOST_LOCAL = ("--simulate-fault-domains", "1")
"""Pool arguments that put every simulated host in one fault domain: VMs get host-local disks
(``auto`` storage), as before replicated disks, for like-for-like comparisons."""


def storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host-local",
        action="store_true",
        help="hosts in one fault domain: host-local disks (default: 3 domains, replicated)",
    )


@contextmanager
def rig() -> Iterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="stratus-bench-") as tmp:
        workdir = Path(tmp)
        nats_server = start_nats_server(workdir / "nats")
        the_rig = Rig(workdir, nats_server)
        try:
            yield the_rig
        finally:
            the_rig.close()
            keep = os.environ.get(LOGS_ENV)
            if keep:
                for log in workdir.rglob("*.log"):  # the NATS server's too
                    shutil.copy(log, Path(keep) / log.name)


class Watch:
    """Every VM and host event seen on the bus, with the time it arrived (monotonic)."""

    def __init__(self) -> None:
        self.vm_state: dict[str, str] = {}
        self.vm_host: dict[str, str | None] = {}
        self.running_at: dict[str, float] = {}
        self.hosts_up: set[str] = set()
        self.hosts_dead: set[str] = set()
        """Hosts the scheduler declared down."""
        self._waiters: list[tuple[Callable[[], bool], asyncio.Event]] = []
        self._awaited: list[tuple[set[str], frozenset[str]]] = []

    async def attach(self, nc: Client) -> None:
        await nc.subscribe("stratus.events.>", cb=self._on_event, pending_msgs_limit=-1)
        await nc.flush()

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = codec.event.decode(msg.data)
        except msgspec.DecodeError:
            return
        now_s = time.monotonic()
        if isinstance(event, VmEvent):
            self.vm_state[event.name] = event.state
            self.vm_host[event.name] = event.host
            if event.state == "running":
                self.running_at[event.name] = now_s
                for waiting, elsewhere_than in self._awaited:
                    if event.host not in elsewhere_than:
                        waiting.discard(event.name)
        elif isinstance(event, HostEvent):
            if event.state == "up":
                self.hosts_up.add(event.host_id)
            else:
                self.hosts_dead.add(event.host_id)
        self._poke()

    def _poke(self) -> None:
        for predicate, event in self._waiters:
            if not event.is_set() and predicate():
                event.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Return once ``predicate`` holds (checked at each event); TimeoutError otherwise."""
        if predicate():
            return
        event = asyncio.Event()
        self._waiters.append((predicate, event))
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        finally:
            self._waiters.remove((predicate, event))

    def awaiting_running(
        self, names: list[str], elsewhere_than: frozenset[str] = frozenset()
    ) -> set[str]:
        """A set of the ``names`` not yet seen running (on a host not in ``elsewhere_than``),
        kept up to date as events arrive."""
        waiting = set(names) if elsewhere_than else set()
        if not elsewhere_than:
            waiting = {name for name in names if self.vm_state.get(name) != "running"}
        self._awaited.append((waiting, elsewhere_than))
        return waiting

    def forget(self, waiting: set[str]) -> None:
        self._awaited = [pair for pair in self._awaited if pair[0] is not waiting]


class CpuWindow:
    """CPU (fraction of one core) and RSS of one process over a window."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self._start_cpu_s = 0.0
        self._start_s = 0.0

    def start(self) -> None:
        times = self._proc.cpu_times()
        self._start_cpu_s = times.user + times.system
        self._start_s = time.monotonic()

    def stop(self) -> dict[str, float]:
        times = self._proc.cpu_times()
        elapsed_s = time.monotonic() - self._start_s
        cpu_s = times.user + times.system - self._start_cpu_s
        rss_mib = self._proc.memory_info().rss / 2**20
        return {
            "window_s": round(elapsed_s, 2),
            "cpu_core_fraction": round(cpu_s / elapsed_s, 3) if elapsed_s > 0 else 0.0,
            "rss_mib": round(rss_mib, 1),
        }


async def submit_api(
    url: str, names: list[str], concurrency: int, *, size_offset: int = 0
) -> tuple[list[float], list[str]]:
    """Create VMs over the NATS API, at most ``concurrency`` in flight: latencies and errors."""
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    errors: list[str] = []

    async def submit(name: str, index: int) -> None:
        size = SIZE_MIX[(index + size_offset) % len(SIZE_MIX)]
        msg = await nc.request(
            subjects.VM_CREATE, codec.encode(CreateVm(name=name, size=size)), timeout=120
        )
        reply = codec.vm_reply.decode(msg.data)
        if reply.error is not None:
            errors.append(f"{name}: {reply.error.code} {reply.error.detail}")

    try:
        return await bounded(names, concurrency, submit), errors
    finally:
        await nc.close()


async def bounded(
    names: list[str], concurrency: int, submit: Callable[[str, int], Awaitable[None]]
) -> list[float]:
    """Submit every name with at most ``concurrency`` in flight; each submission's latency."""
    latencies_s: list[float] = []
    queue = iter(enumerate(names))

    async def worker() -> None:
        for index, name in queue:
            start_s = time.monotonic()
            await submit(name, index)
            latencies_s.append(time.monotonic() - start_s)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies_s
