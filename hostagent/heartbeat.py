"""The heartbeat loop: the host's full report, sent as a NATS request; each ack renews the lease.

Heartbeats go every ``heartbeat_interval_s`` (±10 % jitter) and also soon after the inventory
changes, coalesced so that a burst of changes costs one heartbeat and never more than one per
``MIN_GAP_S``. The ack carries the cluster's timing knobs, which the agent adopts: the scheduler
is their source of truth; the configured values only hold until the first ack.

An inventory that the scheduler says it holds (the ack names its digest) is sent as the digest
alone: at 10,000 hosts, decoding unchanged inventories was half of the scheduler's work.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import msgspec
import nats.errors
from msgspec.structs import replace
from nats.aio.client import Client

from common import codec, subjects
from common.clock import Clock
from common.messages import Heartbeat, HeartbeatAck
from hostagent.agent import Agent

log = logging.getLogger(__name__)

MIN_GAP_S = 0.05
"""At most one heartbeat per this many seconds for inventory changes."""
JITTER = 0.1


class InventoryReport:
    """Leaves an inventory out of a heartbeat when the scheduler holds it already."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = ""
        """The digest the scheduler last said it holds for this host."""

    def fill(self, heartbeat: Heartbeat) -> Heartbeat:
        """``heartbeat`` (with its full inventory) as it goes on the wire."""
        digest = codec.inventory_digest(heartbeat.vms)
        if digest == self.held:
            return replace(heartbeat, vms=[], inventory_digest=digest, vms_omitted=True)
        return replace(heartbeat, inventory_digest=digest)

    def adopt(self, ack: HeartbeatAck, omitted: str) -> bool:
        """Take in an ack of a heartbeat that left out the inventory of digest ``omitted``
        ("" if it left nothing out). True when the scheduler lacked that inventory: the next
        heartbeat must carry it, and soon."""
        self.held = ack.inventory_digest
        return omitted != "" and ack.inventory_digest != omitted


def omitted_digest(heartbeat: Heartbeat) -> str:
    return heartbeat.inventory_digest if heartbeat.vms_omitted else ""


class HeartbeatLoop:
    def __init__(
        self,
        nc: Client,
        agent: Agent,
        template: Heartbeat,
        *,
        heartbeat_interval_s: float,
        fence_after_s: float,
        clock: Clock,
        rng: random.Random | None = None,
        on_cpu_overcommit: Callable[[float], None] | None = None,
    ) -> None:
        """``template`` holds the host's identity; ``seq``, ``fenced`` and ``vms`` are filled in."""
        self._nc = nc
        self._agent = agent
        self._template = template
        self._subject = subjects.host_heartbeat(template.host_id)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.fence_after_s = fence_after_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_cpu_overcommit = on_cpu_overcommit
        self._seq = 0
        self._last_sent_s = float("-inf")
        self._report = InventoryReport()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                await self._wait_turn()
                tg.create_task(self.send(self.next_heartbeat()))

    async def _wait_turn(self) -> None:
        """Return when the next heartbeat is due: the interval passed, or the inventory changed."""
        interval_s = self.heartbeat_interval_s * self._rng.uniform(1 - JITTER, 1 + JITTER)
        remaining_s = self._last_sent_s + interval_s - self._clock.monotonic_s()
        if remaining_s > 0:
            try:
                async with asyncio.timeout(remaining_s):
                    await self._agent.changed.wait()
            except TimeoutError:
                return
        gap_s = self._last_sent_s + MIN_GAP_S - self._clock.monotonic_s()
        if gap_s > 0:
            await asyncio.sleep(gap_s)

    def next_heartbeat(self) -> Heartbeat:
        """The next report (clears the agent's changed flag: this snapshot covers them)."""
        self._agent.changed.clear()
        self._seq += 1
        self._last_sent_s = self._clock.monotonic_s()
        return self._report.fill(
            replace(
                self._template,
                seq=self._seq,
                fenced=self._agent.fenced,
                vms=self._agent.inventory(),
            )
        )

    async def send(self, heartbeat: Heartbeat) -> None:
        """Send one heartbeat; an ack renews the lease from this moment. Never raises on I/O."""
        sent_at_s = self._clock.monotonic_s()
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
        if ack.host_id != heartbeat.host_id or ack.seq != heartbeat.seq:
            log.warning(
                "mismatched heartbeat ack dropped host_id=%s seq=%d sent_seq=%d",
                ack.host_id,
                ack.seq,
                heartbeat.seq,
            )
            return
        if not self._agent.epochs.admit(ack.epoch):
            return  # a deposed leader's ack renews nothing
        self._adopt_timing(ack)
        if self._report.adopt(ack, omitted_digest(heartbeat)):
            self._agent.changed.set()
        if self._on_cpu_overcommit is not None and ack.cpu_overcommit >= 1.0:
            self._on_cpu_overcommit(ack.cpu_overcommit)
        self._agent.renew_lease(sent_at_s, self.fence_after_s)

    def _adopt_timing(self, ack: HeartbeatAck) -> None:
        interval_s, fence_after_s = ack.heartbeat_interval_s, ack.fence_after_s
        if not 0 < interval_s < fence_after_s:
            log.warning(
                "heartbeat ack timing ignored heartbeat_interval_s=%s fence_after_s=%s",
                interval_s,
                fence_after_s,
            )
            return
        if (interval_s, fence_after_s) != (self.heartbeat_interval_s, self.fence_after_s):
            log.info(
                "timing adopted from scheduler scheduler_id=%s heartbeat_interval_s=%g "
                "fence_after_s=%g",
                ack.scheduler_id,
                interval_s,
                fence_after_s,
            )
            self.heartbeat_interval_s, self.fence_after_s = interval_s, fence_after_s
