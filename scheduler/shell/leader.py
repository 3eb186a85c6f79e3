"""The leader lease: any number of schedulers run, one leads.

The lease is the key ``leader`` of the JetStream KV bucket STRATUS_LEADER (replicas from the
config), whose TTL (the bucket's max age) is ``lease_s``: a key not rewritten for ``lease_s``
disappears. A standby takes the lease with ``kv.create`` (fails while the key exists); the
leader renews it with ``kv.update(..., last=revision)`` every ``lease_s / 6``; one renewal may
take until the acting window ends (below), so a process that stalls (a long step, no CPU for a
while on a loaded machine) for up to about half the lease keeps it.

- **Epoch**: the KV revision of the write that won the lease. Stream sequences only grow (also
  across expiries), so every leadership has a larger epoch than every earlier one.
- **Acting window**: the leader acts only while ``now < sent_at + lease_s - margin`` where
  ``sent_at`` is when it *sent* its last successful renewal (monotonic). The server stored that
  write after it was sent and expires the key no sooner than ``lease_s`` after storing it, so
  the leader stops acting before anyone else can win the lease. (Assumes the NATS servers'
  clocks do not jump forward by more than the margin: run them with NTP slewing.)
- A renewal that fails with a wrong revision means someone else leads: the term ends at once.
- A process restarted on the same store (same node id, see ``scheduler/ha.py``) that finds its
  own node's key takes it over at once (``update`` at its revision) instead of waiting for it
  to expire: the store's lock file proves the previous process on it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from common import subjects
from common.clock import Clock
from common.streams import ensure_replicas

log = logging.getLogger(__name__)

LEASE_BUCKET = subjects.LEASE_BUCKET
LEASE_KEY = "leader"
MARGIN_FRACTION = 0.2
"""Of ``lease_s``: how long before the server could expire the key the leader stops acting."""
RENEWALS_PER_LEASE = 6
"""Renewals sent per ``lease_s``: with 3 a stall of 1 s in the middle of the 2.4 s window left
too little of it for the next renewal's round trip on a loaded machine, and the leader stepped
down in ``bench.e2e`` (its store then reloaded, its jobs redelivered)."""
TRIES_PER_LEASE = 12
"""A standby's attempts to win the lease per ``lease_s``. It wins once the key expires, which
after a kill -9 of the leader is ``lease_s`` after its last renewal was stored; the more often
it tries, the shorter the wait after that (with 4 tries and 6 renewals a lease, a takeover took
3.4-3.7 s at p50, against 3.0 s now)."""
SLOW_RENEWAL_FRACTION = 0.25
"""A renewal whose round trip takes longer than this part of ``lease_s`` marks a gap: NATS or
this process stalled, so hosts get a fresh window (nobody could be heard meanwhile)."""


class LeaseHolder(msgspec.Struct, kw_only=True):
    """The lease key's value: who leads."""

    node: str
    scheduler_id: str


@dataclass
class LeaseClock:
    """The acting window of one leadership. Pure: times are passed in."""

    lease_s: float
    epoch: int = 0
    revision: int = 0
    acting_until_s: float = float("-inf")
    revoked: bool = False

    @property
    def margin_s(self) -> float:
        return self.lease_s * MARGIN_FRACTION

    def granted(self, revision: int, sent_at_s: float) -> None:
        """A write of the key sent at ``sent_at_s`` succeeded with ``revision``."""
        self.revision = revision
        self.acting_until_s = max(self.acting_until_s, sent_at_s + self.lease_s - self.margin_s)

    def may_act(self, now_s: float) -> bool:
        return not self.revoked and now_s < self.acting_until_s


async def lease_bucket(js: JetStreamContext, lease_s: float, replicas: int) -> KeyValue:
    try:
        kv = await js.key_value(LEASE_BUCKET)
    except BucketNotFoundError:
        kv = await js.create_key_value(
            bucket=LEASE_BUCKET, ttl=lease_s, replicas=replicas, storage=StorageType.FILE
        )
    await ensure_replicas(js, f"KV_{LEASE_BUCKET}", replicas)
    return kv


class Lease:
    """Winning and renewing the lease (the shell around a ``LeaseClock``)."""

    def __init__(self, kv: KeyValue, holder: LeaseHolder, lease_s: float, clock: Clock) -> None:
        self.kv = kv
        self.holder = holder
        self.value = msgspec.json.encode(holder)
        self.lease_s = lease_s
        self.clock = clock
        self.term = LeaseClock(lease_s)
        self.gap = False
        """Set when a renewal was slow or failed: the judge of hosts was not healthy."""

    @property
    def renew_every_s(self) -> float:
        """How long after a renewal the next one is sent."""
        return self.lease_s / RENEWALS_PER_LEASE

    @property
    def try_every_s(self) -> float:
        """How long a standby waits between its attempts to win the lease."""
        return self.lease_s / TRIES_PER_LEASE

    @property
    def attempt_s(self) -> float:
        """How long an attempt to win, take over or release the lease may take."""
        return self.lease_s / 3

    async def try_win(self) -> bool:
        """One attempt to become the leader; True when this process now holds the lease."""
        sent_at_s = self.clock.monotonic_s()
        revision: int | None
        try:
            async with asyncio.timeout(self.attempt_s):
                revision = await self.kv.create(LEASE_KEY, self.value)
        except KeyWrongLastSequenceError:
            revision = await self._reclaim_own()
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("lease attempt failed error=%r", exc)
            return False
        if revision is None:
            return False
        self.term = LeaseClock(self.lease_s, epoch=revision)
        self.term.granted(revision, sent_at_s)
        log.info("leader lease won epoch=%d node=%s", revision, self.holder.node)
        return True

    async def _reclaim_own(self) -> int | None:
        """The key exists: if this node's previous process holds it, take it over now."""
        try:
            async with asyncio.timeout(self.attempt_s):
                entry = await self.kv.get(LEASE_KEY)
                if entry.value is None:
                    return None
                current = msgspec.json.decode(entry.value, type=LeaseHolder)
                if current.node != self.holder.node or entry.revision is None:
                    return None
                return await self.kv.update(LEASE_KEY, self.value, last=entry.revision)
        except (KeyNotFoundError, KeyWrongLastSequenceError, msgspec.DecodeError):
            return None
        except (nats.errors.Error, TimeoutError):
            return None

    async def keep(self) -> None:
        """Renew the lease until it is lost; return when this process must stop acting."""
        term = self.term
        while True:
            await asyncio.sleep(min(self.renew_every_s, self._left_s()))
            sent_at_s = self.clock.monotonic_s()
            try:  # until the term's end, no later: past it, this process steps down at once
                async with asyncio.timeout(self._left_s()):
                    revision = await self.kv.update(LEASE_KEY, self.value, last=term.revision)
            except KeyWrongLastSequenceError:
                log.warning("leader lease lost: another leader epoch=%d", term.epoch)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                self.gap = True
                log.warning("lease renewal failed epoch=%d error=%r", term.epoch, exc)
            else:
                term.granted(revision, sent_at_s)
                if self.clock.monotonic_s() - sent_at_s > self.lease_s * SLOW_RENEWAL_FRACTION:
                    self.gap = True
            if not term.may_act(self.clock.monotonic_s()):
                log.warning("leader lease not renewed in time: stepping down epoch=%d", term.epoch)
                return

    def _left_s(self) -> float:
        """How long this process may still act without another renewal."""
        return max(self.term.acting_until_s - self.clock.monotonic_s(), 0.0)

    async def release(self) -> None:
        """Give the lease up at a clean shutdown, so a standby need not wait for it to expire."""
        self.term.revoked = True
        try:
            async with asyncio.timeout(self.attempt_s):
                await self.kv.delete(LEASE_KEY, last=self.term.revision)
        except (nats.errors.Error, TimeoutError, KeyWrongLastSequenceError) as exc:
            log.debug("lease not released error=%r", exc)
