"""A scheduler's term of office, as the shell (scheduler/app.py) sees it.

The app asks its term three things: may I act now (ack heartbeats, send commands, reply), which
epoch do I stamp on what I send, and has my judgement of hosts been interrupted (so every host
gets a fresh window). It hands the term each committed batch first (the state log).

``SoloTerm`` is a scheduler without a lease (in-process uses, tests): it always acts, epoch 0.
``LeaderTerm`` is one leadership won through the lease (scheduler/ha.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from common.clock import Clock
from common.errors import StratusError
from scheduler.shell.leader import Lease
from scheduler.shell.statelog import StateLog
from scheduler.shell.store import Rows

log = logging.getLogger(__name__)


class NotLeader(StratusError):
    """This scheduler's acting window has closed: it must not act any more."""


class Term(Protocol):
    @property
    def epoch(self) -> int: ...

    @property
    def api_queue(self) -> str:
        """The queue group of the API subscription ("" for none)."""

    def may_act(self) -> bool:
        """Whether this scheduler may act (and answer) right now."""

    def check(self) -> None:
        """Raise NotLeader unless this scheduler may act right now."""

    async def append(self, rows: Rows) -> Rows: ...

    def fresh_windows_due(self, now_s: float) -> bool: ...


class TickGaps:
    """Notices a late tick: the loop itself was not on time (a SIGSTOP, a stall)."""

    def __init__(self, tick_s: float, slack_s: float) -> None:
        self.tick_s = tick_s
        self.slack_s = slack_s
        self._last_s: float | None = None

    def late(self, now_s: float) -> bool:
        last, self._last_s = self._last_s, now_s
        return last is not None and now_s - last > self.tick_s + self.slack_s


def tick_slack_s(heartbeat_interval_s: float) -> float:
    """A tick later than this (beyond tick_s) may have kept heartbeats unheard: a gap."""
    return max(0.5, heartbeat_interval_s)


class SoloTerm:
    """No lease: always acts, stamps epoch 0, logs nothing."""

    def __init__(self, tick_s: float, heartbeat_interval_s: float) -> None:
        self._gaps = TickGaps(tick_s, tick_slack_s(heartbeat_interval_s))

    @property
    def epoch(self) -> int:
        return 0

    @property
    def api_queue(self) -> str:
        return "stratus-scheduler"

    def may_act(self) -> bool:
        return True

    def check(self) -> None:
        return None

    async def append(self, rows: Rows) -> Rows:
        return rows

    def fresh_windows_due(self, now_s: float) -> bool:
        return self._gaps.late(now_s)


class LeaderTerm:
    """One leadership: acts while the lease's acting window is open; appends every batch to the
    state log before it is stored or acted on; snapshots every ``snapshot_every`` batches."""

    def __init__(
        self,
        lease: Lease,
        statelog: StateLog,
        clock: Clock,
        *,
        tick_s: float,
        heartbeat_interval_s: float,
        db_path: str,
        snapshot_every: int,
    ) -> None:
        self.lease = lease
        self.statelog = statelog
        self.clock = clock
        self.db_path = db_path
        self.snapshot_every = snapshot_every
        self._gaps = TickGaps(tick_s, tick_slack_s(heartbeat_interval_s))
        self._snapshot: asyncio.Task[int] | None = None

    @property
    def epoch(self) -> int:
        return self.lease.term.epoch

    @property
    def api_queue(self) -> str:
        """None: only the leader subscribes, and a deposed leader cut off on a frozen NATS
        node keeps a stale subscription there that a queue group would send requests to."""
        return ""

    def may_act(self) -> bool:
        return self.lease.term.may_act(self.clock.monotonic_s())

    def check(self) -> None:
        if not self.may_act():
            raise NotLeader(f"not the leader any more (epoch {self.epoch})")

    async def append(self, rows: Rows) -> Rows:
        self.check()
        logged = await self.statelog.append(rows)
        if self.statelog.appended % self.snapshot_every == 0 and rows:
            self._start_snapshot()
        return logged

    def _start_snapshot(self) -> None:
        if self._snapshot is not None and not self._snapshot.done():
            return
        self._snapshot = asyncio.get_running_loop().create_task(
            self.statelog.take_snapshot(self.db_path), name="state-snapshot"
        )
        self._snapshot.add_done_callback(_log_failure)

    def fresh_windows_due(self, now_s: float) -> bool:
        late = self._gaps.late(now_s)
        gap, self.lease.gap = self.lease.gap, False
        return late or gap


def _log_failure(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("state snapshot failed error=%r", task.exception())
