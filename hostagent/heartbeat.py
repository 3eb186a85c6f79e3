"""The heartbeat loop: the host's full report, sent as a NATS request; each ack renews the lease.

Heartbeats go every ``heartbeat_interval_s`` (±10 % jitter) and also soon after the report
changes, coalesced so that a burst of changes costs one heartbeat and never more than one per
``MIN_GAP_S``, except when a migration's status changed: that report goes at once (the
switchover waits for it), also when the news comes while an ordinary change waits out the gap.
The ack carries the cluster's timing knobs, which the agent adopts: the scheduler is their
source of truth; the configured values only hold until the first ack.

What a heartbeat says, and what an ack means, is decided by :class:`hostagent.state.AgentState`
(an inventory the scheduler holds goes as its digest alone); this loop, part of the shell, only
times and sends.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import msgspec
import nats.errors
from nats.aio.client import Client

from common import codec, subjects
from common.clock import Clock
from common.messages import Heartbeat
from hostagent.agent import Agent
from hostagent.stimuli import AckReceived, AdoptCpuOvercommit, ClaimRefused, TimingAdopted

__all__ = ["JITTER", "MIN_GAP_S", "HeartbeatLoop"]

log = logging.getLogger(__name__)

MIN_GAP_S = 0.05
"""At most one heartbeat per this many seconds for inventory changes."""
JITTER = 0.1


class HeartbeatLoop:
    def __init__(
        self,
        nc: Client,
        agent: Agent,
        *,
        clock: Clock,
        rng: random.Random | None = None,
        on_cpu_overcommit: Callable[[float], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._nc = nc
        self._agent = agent
        self._subject = subjects.host_heartbeat(agent.host_id)
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_cpu_overcommit = on_cpu_overcommit
        self._on_refused = on_refused
        """Told when another live agent holds this host id (the agent then exits)."""
        self._last_sent_s = float("-inf")
        self.holding = False
        """Waiting out ``MIN_GAP_S`` with a change to report (a migration's news ends it)."""

    @property
    def heartbeat_interval_s(self) -> float:
        return self._agent.state.heartbeat_interval_s

    @property
    def fence_after_s(self) -> float:
        return self._agent.state.fence_after_s

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                await self._wait_turn()
                tg.create_task(self.send(self.next_heartbeat()))

    async def _wait_turn(self) -> None:
        """Return when the next heartbeat is due: the interval passed, or the report changed."""
        interval_s = self.heartbeat_interval_s * self._rng.uniform(1 - JITTER, 1 + JITTER)
        remaining_s = self._last_sent_s + interval_s - self._clock.monotonic_s()
        if remaining_s > 0:
            try:
                async with asyncio.timeout(remaining_s):
                    await self._agent.changed.wait()
            except TimeoutError:
                return
        gap_s = self._last_sent_s + MIN_GAP_S - self._clock.monotonic_s()
        if gap_s > 0:  # a migration's news goes at once, also one that comes during the gap
            self.holding = True
            try:
                async with asyncio.timeout(gap_s):
                    await self._agent.urgent.wait()
            except TimeoutError:
                pass
            finally:
                self.holding = False

    def next_heartbeat(self) -> Heartbeat:
        """The next report (clears the agent's changed flag: this snapshot covers them)."""
        self._agent.changed.clear()
        self._last_sent_s = self._clock.monotonic_s()
        return self._agent.next_heartbeat()

    async def send(self, heartbeat: Heartbeat) -> None:
        """Send one heartbeat; an ack renews the lease from its send. Never raises on I/O."""
        log.debug(
            "heartbeat seq=%d vms=%d omitted=%s",
            heartbeat.seq,
            len(heartbeat.vms),
            heartbeat.vms_omitted,
        )
        try:
            reply = await self._nc.request(
                self._subject, codec.encode(heartbeat), timeout=self.heartbeat_interval_s
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("heartbeat unanswered seq=%d error=%r", heartbeat.seq, exc)
            return
        try:
            ack = codec.heartbeat_ack.decode(reply.data)
        except msgspec.DecodeError as exc:
            log.warning("malformed heartbeat ack subject=%s error=%s", self._subject, exc)
            return
        for instruction in self._agent.handle(AckReceived(ack)):
            match instruction:
                case TimingAdopted():
                    log.info(
                        "timing adopted from scheduler scheduler_id=%s heartbeat_interval_s=%g "
                        "fence_after_s=%g",
                        instruction.scheduler_id,
                        instruction.heartbeat_interval_s,
                        instruction.fence_after_s,
                    )
                case AdoptCpuOvercommit(ratio=ratio):
                    if self._on_cpu_overcommit is not None:
                        self._on_cpu_overcommit(ratio)
                case ClaimRefused(reason=reason):
                    if self._on_refused is not None:
                        self._on_refused(reason)
                case _:
                    log.error("instruction not carried out instruction=%r", instruction)
