"""The heartbeat loop against a stub NATS client: content, acks, lease, coalescing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

import nats.errors
import pytest
from nats.aio.client import Client

from common import codec
from common.clock import SystemClock
from common.messages import Heartbeat, HeartbeatAck, ObservedState, StartVm
from common.resources import Resources
from common.waiting import Deadline
from hostagent.agent import Agent
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecLog
from hostagent.heartbeat import MIN_GAP_S, HeartbeatLoop
from tests.unit.hostagent.conftest import FakeClock, make_spec, make_state, renew
from tests.waiting import wait_until

TEMPLATE = Heartbeat(
    host_id="h1",
    seq=0,
    boot_id="boot-1",
    capacity=Resources(4000, 8192),
    region="eu",
    fault_domain="fd-2",
    labels={"ssd": "yes"},
    cpu_overcommit=2.0,
)


@dataclass
class _Reply:
    data: bytes


Responder = Callable[[Heartbeat], bytes | Exception]


def ack_for(
    hb: Heartbeat, *, interval_s: float = 0.2, fence_after_s: float = 0.8, digest: str = ""
) -> bytes:
    return codec.encode(
        HeartbeatAck(
            host_id=hb.host_id,
            seq=hb.seq,
            scheduler_id="s1",
            heartbeat_interval_s=interval_s,
            fence_after_s=fence_after_s,
            inventory_digest=digest,
        )
    )


class StubNats:
    def __init__(self, respond: Responder, *, on_request: Callable[[], None] = lambda: None):
        self.respond = respond
        self.on_request = on_request
        self.sent: list[Heartbeat] = []
        self.sent_at_s: list[float] = []
        self.subjects: list[str] = []

    async def request(self, subject: str, payload: bytes, timeout: float) -> _Reply:  # noqa: ASYNC109 (nats API)
        heartbeat = codec.heartbeat.decode(payload)
        self.sent.append(heartbeat)
        self.sent_at_s.append(time.monotonic())
        self.subjects.append(subject)
        self.on_request()
        reply = self.respond(heartbeat)
        if isinstance(reply, Exception):
            raise reply
        return _Reply(reply)


@pytest.fixture
def agent(driver: FakeDriver, execlog: ExecLog, clock: FakeClock) -> Agent:
    """An agent on ``TEMPLATE`` holding a fresh lease."""
    agent = Agent(make_state(TEMPLATE), driver, execlog, clock)
    renew(agent, clock)
    return agent


def make_loop(
    stub: StubNats, agent: Agent, clock: object, interval_s: float = 1.0
) -> HeartbeatLoop:
    agent.state.heartbeat_interval_s = interval_s
    return HeartbeatLoop(cast(Client, stub), agent, clock=clock)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(loop: HeartbeatLoop) -> AsyncIterator[None]:
    """The loop runs inside; cancelled on the way out."""
    runner = asyncio.create_task(loop.run())
    try:
        yield
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_heartbeat_carries_identity_and_full_inventory(
    agent: Agent, clock: FakeClock
) -> None:
    await agent.execute(StartVm(vm=make_spec("vm-1"), generation=3))
    loop = make_loop(StubNats(ack_for), agent, clock)
    first, second = loop.next_heartbeat(), loop.next_heartbeat()
    assert second.seq == first.seq + 1
    assert (first.host_id, first.boot_id, first.region, first.fault_domain) == (
        "h1",
        "boot-1",
        "eu",
        "fd-2",
    )
    assert (first.labels, first.cpu_overcommit, first.driver) == ({"ssd": "yes"}, 2.0, "fake")
    assert [(vm.name, vm.generation, vm.state) for vm in first.vms] == [
        ("vm-1", 3, ObservedState.RUNNING)
    ]
    assert not first.fenced


async def test_ack_renews_lease_from_send_time_and_adopts_timing(
    agent: Agent, clock: FakeClock
) -> None:
    def slow_network() -> None:
        clock.now_s += 0.5  # the ack arrives half a second after the send

    stub = StubNats(ack_for, on_request=slow_network)
    loop = make_loop(stub, agent, clock)
    sent_at_s = clock.now_s
    await loop.send(loop.next_heartbeat())
    assert stub.subjects == ["stratus.host.h1.hb"]
    assert agent.lease.expires_at_s == sent_at_s + 0.8
    assert (loop.heartbeat_interval_s, loop.fence_after_s) == (0.2, 0.8)


async def test_bad_acks_do_not_renew(agent: Agent, clock: FakeClock) -> None:
    before = agent.lease
    replies: list[bytes | Exception] = [
        b"not json",
        ack_for(TEMPLATE),  # seq 0: answers no heartbeat we sent
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
    ]
    clock.now_s += 1
    loop = make_loop(StubNats(lambda hb: replies.pop(0)), agent, clock)
    for _ in range(4):
        await loop.send(loop.next_heartbeat())
    assert agent.lease == before


async def test_ack_with_nonsense_timing_keeps_ours(agent: Agent, clock: FakeClock) -> None:
    loop = make_loop(StubNats(lambda hb: ack_for(hb, interval_s=5, fence_after_s=1)), agent, clock)
    await loop.send(loop.next_heartbeat())
    assert (loop.heartbeat_interval_s, loop.fence_after_s) == (1.0, 4.0)


async def test_inventory_changes_are_coalesced(agent: Agent) -> None:
    stub = StubNats(lambda hb: ack_for(hb, interval_s=30, fence_after_s=60))
    loop = make_loop(stub, agent, SystemClock(), interval_s=30)
    async with running(loop):
        await wait_until(lambda: len(stub.sent) == 1, timeout_s=1, message="first heartbeat")
        agent.changed.set()
        await wait_until(lambda: len(stub.sent) == 2, timeout_s=1, message="change heartbeat")
        storm = Deadline.after(0.3)
        while not storm.passed():  # a storm of changes, one every 5 ms
            agent.changed.set()
            await asyncio.sleep(0.005)
        gaps = [b - a for a, b in zip(stub.sent_at_s[1:], stub.sent_at_s[2:], strict=False)]
        assert all(gap >= MIN_GAP_S * 0.9 for gap in gaps), gaps
        assert 2 <= len(stub.sent) <= 2 + 0.3 / MIN_GAP_S + 1


async def test_migration_news_goes_at_once(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration's status change (the switchover waits for it) skips the coalescing gap."""
    monkeypatch.setattr("hostagent.heartbeat.MIN_GAP_S", 1.0)
    stub = StubNats(lambda hb: ack_for(hb, interval_s=30, fence_after_s=60))
    loop = make_loop(stub, agent, SystemClock(), interval_s=30)
    async with running(loop):
        await wait_until(lambda: len(stub.sent) == 1, timeout_s=1, message="first heartbeat")
        agent.changed.set()  # an ordinary change waits out the 1 s gap
        await wait_until(lambda: len(stub.sent) == 2, timeout_s=2, message="change heartbeat")
        agent.on_report_now()
        await wait_until(lambda: len(stub.sent) == 3, timeout_s=2, message="news heartbeat")
        assert stub.sent_at_s[1] - stub.sent_at_s[0] >= 0.9
        assert stub.sent_at_s[2] - stub.sent_at_s[1] < 0.5
        assert not agent.urgent.is_set()


async def test_migration_news_cuts_a_coalescing_gap_short(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """News that comes while an ordinary change waits out the gap goes at once too: the
    source's "sent" (the switchover waits for it) is not held behind a progress report."""
    monkeypatch.setattr("hostagent.heartbeat.MIN_GAP_S", 5.0)
    stub = StubNats(lambda hb: ack_for(hb, interval_s=30, fence_after_s=60))
    loop = make_loop(stub, agent, SystemClock(), interval_s=30)
    async with running(loop):
        await wait_until(lambda: len(stub.sent) == 1, timeout_s=1, message="first heartbeat")
        agent.changed.set()  # an ordinary change: held for the 5 s gap
        await wait_until(lambda: loop.holding, timeout_s=1, message="gap waited out")
        agent.on_report_now()
        await wait_until(lambda: len(stub.sent) == 2, timeout_s=2, message="news heartbeat")
        assert stub.sent_at_s[1] - stub.sent_at_s[0] < 2.0
        assert not loop.holding


async def test_an_inventory_the_scheduler_holds_goes_as_its_digest_alone(
    agent: Agent, clock: FakeClock
) -> None:
    held = {"digest": ""}

    def scheduler(hb: Heartbeat) -> bytes:
        """Holds every inventory sent in full; forgets all when "restarted"."""
        if not hb.vms_omitted:
            held["digest"] = hb.inventory_digest
        return ack_for(hb, digest=held["digest"])

    await agent.execute(StartVm(vm=make_spec("vm-1"), generation=3))
    loop = make_loop(StubNats(scheduler), agent, clock)
    first = loop.next_heartbeat()
    assert (len(first.vms), first.vms_omitted) == (1, False)
    await loop.send(first)
    assert held["digest"] == first.inventory_digest != ""
    agent.changed.clear()
    second = loop.next_heartbeat()
    assert (second.vms, second.vms_omitted) == ([], True)
    assert second.inventory_digest == first.inventory_digest
    await loop.send(second)
    assert not agent.changed.is_set()

    held["digest"] = ""  # the scheduler restarted: it holds no inventory of ours
    await loop.send(loop.next_heartbeat())
    assert agent.changed.is_set()  # so the next heartbeat goes soon, and in full
    assert len(loop.next_heartbeat().vms) == 1

    await agent.execute(StartVm(vm=make_spec("vm-2"), generation=1))
    changed = loop.next_heartbeat()
    assert [vm.name for vm in changed.vms] == ["vm-1", "vm-2"]
    assert changed.inventory_digest != first.inventory_digest
