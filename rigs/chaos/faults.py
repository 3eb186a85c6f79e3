"""Faults: a seeded plan (kinds, victims, durations) and the injector that carries it out.

Faults run one after another, each held for its duration and then undone (the victim restarted,
continued or healed), with a short seeded gap; the system is never given time to settle on
purpose, so the next fault often lands on a recovery still under way.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from enum import StrEnum

from rigs.chaos.rig import TIMINGS, Rig


@dataclass
class Violation:
    kind: str
    detail: str


class Kind(StrEnum):
    AGENT_KILL = "agent_kill"
    SCHEDULER_KILL = "scheduler_kill"
    NATS_KILL = "nats_kill"
    NATS_RESTART = "nats_restart"
    AGENT_STOP_SHORT = "agent_stop_short"
    AGENT_STOP_LONG = "agent_stop_long"
    PARTITION_OUT = "partition_agent_to_nats"
    PARTITION_IN = "partition_nats_to_agent"
    PARTITION_BOTH = "partition_two_way"
    DUPLICATE_HOST_ID = "duplicate_host_id"


AGENT_SIDE = {
    Kind.AGENT_KILL,
    Kind.AGENT_STOP_SHORT,
    Kind.AGENT_STOP_LONG,
    Kind.PARTITION_OUT,
    Kind.PARTITION_IN,
    Kind.PARTITION_BOTH,
}
"""Faults that make one host silent: only these may get a host declared dead."""

WEIGHTS = {
    Kind.AGENT_KILL: 3,
    Kind.SCHEDULER_KILL: 2,
    Kind.NATS_KILL: 2,
    Kind.NATS_RESTART: 1,
    Kind.AGENT_STOP_SHORT: 2,
    Kind.AGENT_STOP_LONG: 2,
    Kind.PARTITION_OUT: 2,
    Kind.PARTITION_IN: 2,
    Kind.PARTITION_BOTH: 2,
    Kind.DUPLICATE_HOST_ID: 1,
}

DEAD_AFTER_S = TIMINGS["dead_after_s"]
FENCE_AFTER_S = TIMINGS["fence_after_s"]
SETTLED_S = 2.0
"""A second agent is started only beside a holder (and a scheduler and NATS) up this long, so
that it is the holder, heard by the scheduler, that the duplicate meets."""
SETTLE_WAIT_S = 15.0


def _duration_s(kind: Kind, rng: random.Random) -> float:
    """How long a fault is held: some shorter, some longer than dead_after_s."""
    if kind is Kind.AGENT_STOP_SHORT:
        return rng.uniform(0.1, FENCE_AFTER_S * 0.6)
    if kind is Kind.AGENT_STOP_LONG:
        return rng.uniform(DEAD_AFTER_S + 0.3, DEAD_AFTER_S + 1.5)
    if kind is Kind.NATS_RESTART:
        return rng.uniform(0.05, 0.8)
    if kind is Kind.DUPLICATE_HOST_ID:  # long enough to start, be refused and exit (~2.5 s)
        return rng.uniform(4.0, 5.0)
    return rng.uniform(0.2, DEAD_AFTER_S + 1.5)


@dataclass
class Fault:
    index: int
    kind: Kind
    host: str | None
    hold_s: float
    gap_s: float
    start: float = 0.0
    """Wall-clock seconds when injected (0 until then)."""
    end: float = 0.0
    """Wall-clock seconds when undone."""
    note: str = ""
    duplicate_exit: int | None = None
    """DUPLICATE_HOST_ID: the second agent's exit status (None: it was still running)."""

    def line(self, t0: float) -> str:
        who = f" host={self.host}" if self.host else ""
        span = f"{self.start - t0:8.2f}s..{self.end - t0:8.2f}s" if self.start else "not run"
        note = f" ({self.note})" if self.note else ""
        return f"#{self.index:04d} {span} {self.kind}{who} hold={self.hold_s:.2f}s{note}"


def plan(rng: random.Random, count: int, hosts: list[str]) -> list[Fault]:
    """``count`` faults chosen by ``rng`` alone: the same seed gives the same plan."""
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    faults = []
    for index in range(count):
        kind = rng.choices(kinds, weights)[0]
        host = rng.choice(hosts) if kind in AGENT_SIDE | {Kind.DUPLICATE_HOST_ID} else None
        faults.append(Fault(index, kind, host, _duration_s(kind, rng), rng.uniform(0.2, 0.8)))
    return faults


class Injector:
    def __init__(self, rig: Rig, *, progress_every: int = 0) -> None:
        self.rig = rig
        self.progress_every = progress_every
        self.done: list[Fault] = []
        self.crashes: list[Violation] = []
        self._duplicate: subprocess.Popen[bytes] | None = None

    async def run(self, faults: list[Fault]) -> None:
        for fault in faults:
            await self.inject(fault)
            if self.progress_every and (fault.index + 1) % self.progress_every == 0:
                print(f"chaos: {fault.index + 1}/{len(faults)} faults", flush=True)

    async def inject(self, fault: Fault) -> None:
        self.done.append(fault)
        await asyncio.to_thread(self._begin, fault)
        # Taken once the signal landed: every audit line of a killed or stopped agent is older.
        fault.start = time.time()
        await asyncio.sleep(fault.hold_s)  # the fault's duration (not a synchronisation)
        await asyncio.to_thread(self._undo, fault)
        fault.end = time.time()
        for crash in await asyncio.to_thread(self.rig.revive):
            fault.note = f"{fault.note} {crash}".strip()
            self.crashes.append(Violation("process_died", f"after fault #{fault.index}: {crash}"))
        await asyncio.sleep(fault.gap_s)

    def _begin(self, fault: Fault) -> None:
        rig, host = self.rig, fault.host
        match fault.kind:
            case Kind.AGENT_KILL:
                assert host is not None
                rig.signal_agent(host, signal.SIGKILL)
            case Kind.AGENT_STOP_SHORT | Kind.AGENT_STOP_LONG:
                assert host is not None
                rig.signal_agent(host, signal.SIGSTOP)
            case Kind.SCHEDULER_KILL:
                rig.kill_scheduler()
            case Kind.NATS_KILL:
                rig.kill_nats(signal.SIGKILL)
            case Kind.NATS_RESTART:
                rig.kill_nats(signal.SIGTERM)
            case Kind.PARTITION_OUT | Kind.PARTITION_IN | Kind.PARTITION_BOTH:
                assert host is not None
                out = fault.kind is not Kind.PARTITION_IN
                inbound = fault.kind is not Kind.PARTITION_OUT
                rig.network.block(rig.agents[host].netns, rig.hub, outbound=out, inbound=inbound)
            case Kind.DUPLICATE_HOST_ID:
                assert host is not None
                deadline = time.monotonic() + SETTLE_WAIT_S
                while not rig.settled(host, SETTLED_S) and time.monotonic() < deadline:
                    time.sleep(0.1)  # the injector's own pace (a thread), not a test's sync
                self._duplicate = rig.start_duplicate(host, fault.index)

    def _undo(self, fault: Fault) -> None:
        rig, host = self.rig, fault.host
        match fault.kind:
            case Kind.AGENT_KILL:
                assert host is not None
                rig.start_agent(host)
            case Kind.AGENT_STOP_SHORT | Kind.AGENT_STOP_LONG:
                assert host is not None
                rig.signal_agent(host, signal.SIGCONT)
            case Kind.SCHEDULER_KILL:
                rig.start_scheduler()
            case Kind.NATS_KILL | Kind.NATS_RESTART:
                rig.start_nats()
            case Kind.PARTITION_OUT | Kind.PARTITION_IN | Kind.PARTITION_BOTH:
                assert host is not None
                rig.network.heal(rig.agents[host].netns)
            case Kind.DUPLICATE_HOST_ID:
                assert self._duplicate is not None
                fault.duplicate_exit = self._duplicate.poll()
                if fault.duplicate_exit is None:
                    self._duplicate.kill()
                self._duplicate.wait(timeout=15)
                self._duplicate = None
