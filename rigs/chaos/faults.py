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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from common.waiting import poll
from rigs.chaos.rig import TIMINGS, Rig


@dataclass
class Violation:
    kind: str
    detail: str


class Kind(StrEnum):
    AGENT_KILL = "agent_kill"
    SCHEDULER_KILL = "scheduler_kill"
    """kill -9 of every scheduler (leader and standby): the whole control plane restarts."""
    LEADER_KILL = "leader_kill"
    """kill -9 of the leading scheduler while its standby runs."""
    SCHEDULER_STOP_SHORT = "scheduler_stop_short"
    SCHEDULER_STOP_LONG = "scheduler_stop_long"
    """SIGSTOP of the leading scheduler, shorter / longer than dead_after_s."""
    SCHEDULER_STARVED = "scheduler_starved"
    """The leading scheduler starved of CPU for longer than dead_after_s: stopped for
    ``STARVED_STOP_S`` of every ``STARVED_PERIOD_S`` (an overloaded machine). It hears every
    heartbeat late and takes requests in few, large steps; it must crash on nothing and declare
    no host dead for that."""
    SECOND_SCHEDULER = "second_scheduler"
    """A scheduler started by mistake: a fresh, empty store on the same NATS."""
    NATS_KILL = "nats_kill"
    NATS_RESTART = "nats_restart"
    NATS_STOP_SHORT = "nats_stop_short"
    NATS_STOP_LONG = "nats_stop_long"
    """SIGSTOP of nats-server, shorter / longer than dead_after_s."""
    AGENT_STOP_SHORT = "agent_stop_short"
    AGENT_STOP_LONG = "agent_stop_long"
    AGENTS_STOP_ALL = "agents_stop_all"
    """SIGSTOP of every agent at once, longer than dead_after_s (a stall of every host: each
    is declared dead with its disks' copies, and every one of them comes back)."""
    PARTITION_OUT = "partition_agent_to_nats"
    PARTITION_IN = "partition_nats_to_agent"
    PARTITION_BOTH = "partition_two_way"
    DUPLICATE_HOST_ID = "duplicate_host_id"
    DISK_FULL = "agent_disk_full"
    """The agent's data disk (a small tmpfs) filled to the last byte; freed on undo. QEMU part
    only: the fake driver keeps nothing on disk but the audit log, the observer's own record."""


AGENT_SIDE = {
    Kind.AGENT_KILL,
    Kind.AGENT_STOP_SHORT,
    Kind.AGENT_STOP_LONG,
    Kind.PARTITION_OUT,
    Kind.PARTITION_IN,
    Kind.PARTITION_BOTH,
}
"""Faults that make one host silent: only these may get a host declared dead."""
ALL_AGENTS = {Kind.AGENTS_STOP_ALL}
"""Faults that make every host silent at once: they may get any host declared dead."""
ON_A_HOST = AGENT_SIDE | {Kind.DUPLICATE_HOST_ID, Kind.DISK_FULL}
ON_THE_LEADER = {
    Kind.LEADER_KILL,
    Kind.SCHEDULER_STOP_SHORT,
    Kind.SCHEDULER_STOP_LONG,
    Kind.SCHEDULER_STARVED,
}
NATS_SILENT = {Kind.NATS_KILL, Kind.NATS_RESTART, Kind.NATS_STOP_SHORT, Kind.NATS_STOP_LONG}
"""Faults during which no agent hears the scheduler (nats-server dead or frozen)."""

SIGTERM_EXIT_S = 15.0
"""How long a process may take to exit after SIGTERM (an orderly stop) before kill -9."""

WEIGHTS = {
    Kind.AGENT_KILL: 3,
    Kind.SCHEDULER_KILL: 1,
    Kind.LEADER_KILL: 2,
    Kind.SCHEDULER_STOP_SHORT: 1,
    Kind.SCHEDULER_STOP_LONG: 2,
    Kind.SCHEDULER_STARVED: 1,
    Kind.SECOND_SCHEDULER: 1,
    Kind.NATS_KILL: 2,
    Kind.NATS_RESTART: 1,
    Kind.NATS_STOP_SHORT: 1,
    Kind.NATS_STOP_LONG: 2,
    Kind.AGENT_STOP_SHORT: 2,
    Kind.AGENT_STOP_LONG: 2,
    Kind.AGENTS_STOP_ALL: 1,
    Kind.PARTITION_OUT: 2,
    Kind.PARTITION_IN: 2,
    Kind.PARTITION_BOTH: 2,
    Kind.DUPLICATE_HOST_ID: 1,
}
"""The fake-driver part's kinds and their weights."""
QEMU_WEIGHTS = {
    Kind.DISK_FULL: 2,
    Kind.AGENT_KILL: 2,
    Kind.AGENT_STOP_LONG: 1,
    Kind.PARTITION_BOTH: 1,
    Kind.LEADER_KILL: 1,
    Kind.NATS_STOP_LONG: 1,
}
"""The QEMU part's kinds (real guests: few faults, each one that moves or pauses them)."""

DEAD_AFTER_S = TIMINGS["dead_after_s"]
FENCE_AFTER_S = TIMINGS["fence_after_s"]
SETTLED_S = 2.0
"""A second agent (or scheduler) is started only once NATS, the schedulers and the holder of the
host id have been up this long (and a scheduler leads): it meets a cluster that knows them."""
SETTLE_WAIT_S = 15.0
STARVED_PERIOD_S = 0.2
STARVED_STOP_S = 0.198
"""A starved scheduler runs 2 ms of every 200 ms: it takes what queued up meanwhile in one step."""

_HOLD_S: dict[Kind, tuple[float, float]] = {
    Kind.AGENT_STOP_SHORT: (0.1, FENCE_AFTER_S * 0.6),
    Kind.AGENT_STOP_LONG: (DEAD_AFTER_S + 0.3, DEAD_AFTER_S + 1.5),
    Kind.AGENTS_STOP_ALL: (DEAD_AFTER_S + 0.3, DEAD_AFTER_S + 1.5),
    Kind.SCHEDULER_STOP_SHORT: (0.1, DEAD_AFTER_S * 0.6),
    Kind.SCHEDULER_STOP_LONG: (DEAD_AFTER_S + 0.3, DEAD_AFTER_S + 3.0),
    Kind.SCHEDULER_STARVED: (DEAD_AFTER_S + 0.3, DEAD_AFTER_S + 3.0),
    Kind.NATS_STOP_SHORT: (0.1, DEAD_AFTER_S * 0.6),
    Kind.NATS_STOP_LONG: (DEAD_AFTER_S + 0.3, DEAD_AFTER_S + 2.0),
    Kind.NATS_RESTART: (0.05, 0.8),
    Kind.DUPLICATE_HOST_ID: (4.0, 5.0),  # long enough to start, be refused and exit (~2.5 s)
    Kind.SECOND_SCHEDULER: (4.0, 6.0),  # long enough to start, catch up and stand by
    Kind.DISK_FULL: (3.0, 6.0),  # past the lease the agent could not write: the guard fences
}


def _duration_s(kind: Kind, rng: random.Random) -> float:
    """How long a fault is held: some shorter, some longer than dead_after_s."""
    low, high = _HOLD_S.get(kind, (0.2, DEAD_AFTER_S + 1.5))
    return rng.uniform(low, high)


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
    scheduler: str = ""
    """ON_THE_LEADER: the scheduler hit (the one leading when the fault began)."""
    duplicate_exit: int | None = None
    """DUPLICATE_HOST_ID: the second agent's exit status (None: it was still running)."""

    def line(self, t0: float) -> str:
        who = f" host={self.host}" if self.host else ""
        who += f" scheduler={self.scheduler}" if self.scheduler else ""
        span = f"{self.start - t0:8.2f}s..{self.end - t0:8.2f}s" if self.start else "not run"
        note = f" ({self.note})" if self.note else ""
        return f"#{self.index:04d} {span} {self.kind}{who} hold={self.hold_s:.2f}s{note}"


def plan(
    rng: random.Random, count: int, hosts: list[str], weights_of: dict[Kind, int] = WEIGHTS
) -> list[Fault]:
    """``count`` faults chosen by ``rng`` alone: the same seed gives the same plan. The first
    ones cover every kind once (in a seeded order), so that a CI-sized run tries them all."""
    kinds = list(weights_of)
    weights = [weights_of[k] for k in kinds]
    first = rng.sample(kinds, len(kinds))
    faults = []
    for index in range(count):
        kind = first[index] if index < len(first) else rng.choices(kinds, weights)[0]
        host = rng.choice(hosts) if kind in ON_A_HOST else None
        faults.append(Fault(index, kind, host, _duration_s(kind, rng), rng.uniform(0.2, 0.8)))
    return faults


class Injector:
    def __init__(
        self,
        rig: Rig,
        *,
        leader: Callable[[], Awaitable[str | None]],
        progress_every: int = 0,
    ) -> None:
        self.rig = rig
        self.leader = leader
        """The name of the scheduler that holds the lease right now (None: nobody)."""
        self.progress_every = progress_every
        self.done: list[Fault] = []
        self.crashes: list[Violation] = []
        self._second: subprocess.Popen[bytes] | None = None
        """The duplicate agent or the mistaken scheduler of the fault under way."""

    async def run(self, faults: list[Fault]) -> None:
        for fault in faults:
            await self.inject(fault)
            if self.progress_every and (fault.index + 1) % self.progress_every == 0:
                print(f"chaos: {fault.index + 1}/{len(faults)} faults", flush=True)

    async def inject(self, fault: Fault) -> None:
        self.done.append(fault)
        if fault.kind in ON_THE_LEADER:
            fault.scheduler = await self._wait_leader() or self.rig.scheduler_names[0]
        elif fault.kind in (Kind.DUPLICATE_HOST_ID, Kind.SECOND_SCHEDULER):
            await self._settle(fault.host)
        await asyncio.to_thread(self._begin, fault)
        # Taken once the signal landed: every audit line of a killed or stopped agent is older.
        fault.start = time.time()
        if fault.kind is Kind.SCHEDULER_STARVED:
            await self._starve(fault.scheduler, fault.hold_s)
        else:
            await asyncio.sleep(fault.hold_s)  # the fault's duration (not a synchronisation)
        await asyncio.to_thread(self._undo, fault)
        fault.end = time.time()
        self.rig.calm_from_s[fault.host] = time.monotonic() + fault.hold_s
        for crash in await asyncio.to_thread(self.rig.revive):
            fault.note = f"{fault.note} {crash}".strip()
            self.crashes.append(Violation("process_died", f"after fault #{fault.index}: {crash}"))
        await asyncio.sleep(fault.gap_s)

    async def _starve(self, scheduler: str, hold_s: float) -> None:
        """Stop and continue ``scheduler`` by turns for ``hold_s``: it runs
        ``STARVED_PERIOD_S - STARVED_STOP_S`` of every ``STARVED_PERIOD_S``."""
        until_s = time.monotonic() + hold_s
        while time.monotonic() < until_s:
            self.rig.signal_scheduler(scheduler, signal.SIGSTOP)
            await asyncio.sleep(STARVED_STOP_S)  # the fault's rhythm (not a synchronisation)
            self.rig.signal_scheduler(scheduler, signal.SIGCONT)
            await asyncio.sleep(STARVED_PERIOD_S - STARVED_STOP_S)

    async def _wait_leader(self) -> str | None:
        """The leader, waited for (bounded) when a previous fault left none for a moment."""
        return await poll(self.leader, timeout_s=SETTLE_WAIT_S, interval_s=0.1)

    async def _settle(self, host: str | None) -> None:
        """Until the processes have run SETTLED_S (bounded) and a scheduler leads."""

        async def settled() -> bool | None:
            if self.rig.settled(host, SETTLED_S) and await self.leader() is not None:
                return True
            return None

        await poll(settled, timeout_s=SETTLE_WAIT_S, interval_s=0.1)

    def _begin(self, fault: Fault) -> None:
        rig, host = self.rig, fault.host
        match fault.kind:
            case Kind.AGENT_KILL:
                assert host is not None
                rig.signal_agent(host, signal.SIGKILL)
            case Kind.AGENT_STOP_SHORT | Kind.AGENT_STOP_LONG:
                assert host is not None
                rig.signal_agent(host, signal.SIGSTOP)
            case Kind.AGENTS_STOP_ALL:
                for each, agent in rig.agents.items():
                    if agent.process is not None:
                        rig.signal_agent(each, signal.SIGSTOP)
            case Kind.PARTITION_OUT | Kind.PARTITION_IN | Kind.PARTITION_BOTH:
                assert host is not None
                out = fault.kind is not Kind.PARTITION_IN
                inbound = fault.kind is not Kind.PARTITION_OUT
                rig.network.block(rig.agents[host].netns, rig.hub, outbound=out, inbound=inbound)
            case Kind.DUPLICATE_HOST_ID:
                assert host is not None
                self._second = rig.start_duplicate(host, fault.index)
            case Kind.DISK_FULL:
                assert host is not None
                fault.note = f"filled with {rig.fill_disk(host)} bytes"
            case _:
                self._begin_control_plane(fault)

    def _begin_control_plane(self, fault: Fault) -> None:
        rig = self.rig
        match fault.kind:
            case Kind.SCHEDULER_KILL:
                for name in rig.scheduler_names:
                    rig.kill_scheduler(name)
            case Kind.LEADER_KILL:
                rig.kill_scheduler(fault.scheduler)
            case Kind.SCHEDULER_STOP_SHORT | Kind.SCHEDULER_STOP_LONG:
                rig.signal_scheduler(fault.scheduler, signal.SIGSTOP)
            case Kind.SCHEDULER_STARVED:
                pass  # stopped and continued by turns while it is held (``_starve``)
            case Kind.SECOND_SCHEDULER:
                self._second = rig.start_mistake(fault.index)
            case Kind.NATS_KILL:
                rig.kill_nats(signal.SIGKILL)
            case Kind.NATS_RESTART:
                rig.kill_nats(signal.SIGTERM)
            case Kind.NATS_STOP_SHORT | Kind.NATS_STOP_LONG:
                rig.signal_nats(signal.SIGSTOP)
            case _:
                raise AssertionError(f"not a control-plane fault: {fault.kind}")

    def _undo(self, fault: Fault) -> None:
        rig, host = self.rig, fault.host
        match fault.kind:
            case Kind.AGENT_KILL:
                assert host is not None
                rig.start_agent(host)
            case Kind.AGENT_STOP_SHORT | Kind.AGENT_STOP_LONG:
                assert host is not None
                rig.signal_agent(host, signal.SIGCONT)
            case Kind.AGENTS_STOP_ALL:
                for each, agent in rig.agents.items():
                    if agent.process is not None:
                        rig.signal_agent(each, signal.SIGCONT)
            case Kind.PARTITION_OUT | Kind.PARTITION_IN | Kind.PARTITION_BOTH:
                assert host is not None
                rig.network.heal(rig.agents[host].netns)
            case Kind.DUPLICATE_HOST_ID:
                fault.duplicate_exit = self._end_second(kill=True)
            case Kind.DISK_FULL:
                assert host is not None
                rig.free_disk(host)
            case _:
                self._undo_control_plane(fault)

    def _undo_control_plane(self, fault: Fault) -> None:
        rig = self.rig
        match fault.kind:
            case Kind.SCHEDULER_KILL:
                for name in rig.scheduler_names:
                    rig.start_scheduler(name)
            case Kind.LEADER_KILL:
                rig.start_scheduler(fault.scheduler)
            case Kind.SCHEDULER_STOP_SHORT | Kind.SCHEDULER_STOP_LONG | Kind.SCHEDULER_STARVED:
                rig.signal_scheduler(fault.scheduler, signal.SIGCONT)
            case Kind.SECOND_SCHEDULER:
                self._end_second(kill=False)
            case Kind.NATS_KILL | Kind.NATS_RESTART:
                rig.start_nats()
            case Kind.NATS_STOP_SHORT | Kind.NATS_STOP_LONG:
                rig.signal_nats(signal.SIGCONT)
            case _:
                raise AssertionError(f"not a control-plane fault: {fault.kind}")

    def _end_second(self, *, kill: bool) -> int | None:
        """Stop the second process of the fault (kill -9, or SIGTERM for an orderly end); its
        exit status before that (None: it was still running)."""
        assert self._second is not None
        status = self._second.poll()
        if status is None:
            self._second.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self._second.wait(timeout=SIGTERM_EXIT_S)
        except subprocess.TimeoutExpired:
            # Not a safety matter, but an operator's SIGTERM must end a scheduler: reported.
            detail = f"pid {self._second.pid} still running {SIGTERM_EXIT_S} s after SIGTERM"
            self.crashes.append(Violation("ignored_sigterm", detail))
            self._second.kill()
            self._second.wait(timeout=SIGTERM_EXIT_S)
        self._second = None
        return status
