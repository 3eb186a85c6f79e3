"""The lease's acting window, tick gaps, and the state log's batch parts (pure parts)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from common.clock import SystemClock
from scheduler.shell.leader import Lease, LeaseClock, LeaseHolder
from scheduler.shell.statelog import PART_BYTES, split
from scheduler.shell.store import Rows
from scheduler.shell.term import TickGaps
from tests.waiting import wait_until


def test_a_leader_acts_only_until_its_last_renewal_was_sent_plus_lease_minus_margin() -> None:
    clock = LeaseClock(lease_s=3.0, epoch=5)
    assert not clock.may_act(0.0)
    clock.granted(revision=5, sent_at_s=10.0)
    assert clock.may_act(10.0)
    assert clock.may_act(10.0 + 3.0 - clock.margin_s - 0.01)
    assert not clock.may_act(10.0 + 3.0 - clock.margin_s)
    clock.granted(revision=6, sent_at_s=11.0)
    assert clock.may_act(13.0 - clock.margin_s)
    assert clock.revision == 6 and clock.epoch == 5


def test_a_late_answer_to_an_older_renewal_never_shortens_the_window() -> None:
    clock = LeaseClock(lease_s=3.0)
    clock.granted(revision=7, sent_at_s=20.0)
    clock.granted(revision=6, sent_at_s=19.0)
    assert clock.may_act(22.0)


def test_a_revoked_term_never_acts() -> None:
    clock = LeaseClock(lease_s=3.0)
    clock.granted(revision=1, sent_at_s=0.0)
    clock.revoked = True
    assert not clock.may_act(0.1)


@pytest.mark.parametrize(
    ("times", "late"),
    [([0.0, 0.2, 0.4], [False, False, False]), ([0.0, 0.2, 1.5], [False, False, True])],
    ids=["on-time", "stalled"],
)
def test_tick_gaps(times: list[float], late: list[bool]) -> None:
    gaps = TickGaps(tick_s=0.2, slack_s=0.5)
    assert [gaps.late(t) for t in times] == late


def test_a_big_batch_goes_in_parts_that_join_to_the_batch() -> None:
    big = Rows(
        vms=[(f"vm-{i}", "running", b"x" * 1000) for i in range(2000)],
        hosts=[],
        images=[],
        replies=[],
        events=[],
        published=[],
    )
    parts = split(big)
    assert len(parts) == 3
    assert all(len(part) <= PART_BYTES for part in parts)
    assert msgspec.msgpack.decode(b"".join(parts), type=Rows) == big


class _StalledKv:
    """A lease bucket whose NATS stopped answering: a renewal never comes back."""

    async def update(self, key: str, value: bytes, last: int) -> int:
        await asyncio.Event().wait()
        raise AssertionError("never answered")


async def test_a_leader_whose_renewal_hangs_steps_down_when_its_window_ends() -> None:
    """The lease keeper returns at the end of the acting window, not a renewal's timeout
    later: the new leader can only win once the key expires, after that end."""
    clock = SystemClock()
    lease = Lease(_StalledKv(), LeaseHolder(node="n", scheduler_id="s"), 0.6, clock)  # type: ignore[arg-type]
    lease.term.granted(1, clock.monotonic_s())
    async with asyncio.timeout(5):
        await lease.keep()
    assert clock.monotonic_s() - lease.term.acting_until_s < 0.1


class _LateOnceKv:
    """A lease bucket that answers one renewal late, as a loaded machine does when the leader
    gets no CPU for a while: the answer comes, after ``late_s``."""

    def __init__(self, late_s: float) -> None:
        self.late_s = late_s
        self.revision = 1
        self.renewals = 0

    async def update(self, key: str, value: bytes, last: int) -> int:
        assert last == self.revision, "each renewal builds on the one before"
        self.renewals += 1
        await asyncio.sleep(self.late_s if self.renewals == 2 else 0.01)  # a round trip
        self.revision += 1
        return self.revision


async def test_a_renewal_answered_late_within_the_window_keeps_the_lease() -> None:
    """A renewal may take what is left of the acting window: one answered 40 % of the lease
    late (a loaded machine, a stalled process) neither deposes the leader nor gets its key
    written twice; the late round trip is noted as a gap for the judge of hosts."""
    clock = SystemClock()
    kv = _LateOnceKv(late_s=0.6)
    lease = Lease(kv, LeaseHolder(node="n", scheduler_id="s"), 1.5, clock)  # type: ignore[arg-type]
    lease.term.granted(1, clock.monotonic_s())
    keeping = asyncio.create_task(lease.keep())
    try:
        await wait_until(lambda: kv.renewals >= 4 or keeping.done(), timeout_s=10)
        assert not keeping.done(), "still leading"
        assert lease.term.may_act(clock.monotonic_s())
        assert lease.term.revision == kv.revision
        assert lease.gap
    finally:
        keeping.cancel()
