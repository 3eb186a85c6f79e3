"""Builders for host agent tests: a fake clock, VM specs, and an agent on a FakeDriver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.messages import Heartbeat, HeartbeatAck, VmSpec
from common.resources import Resources
from hostagent.agent import Agent
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecEvent, ExecLog, read_execlog
from hostagent.state import AgentState
from hostagent.stimuli import AckReceived

TEMPLATE = Heartbeat(host_id="h1", seq=0, boot_id="boot-1", capacity=Resources(4000, 8192))


class FakeClock:
    def __init__(self, now_s: float = 100.0) -> None:
        self.now_s = now_s

    def monotonic_s(self) -> float:
        return self.now_s

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now_s, UTC)


def make_spec(name: str = "vm-1", *, cpu_milli: int = 1000, mem_mib: int = 1024) -> VmSpec:
    return VmSpec(name=name, size="Small", cpu_milli=cpu_milli, mem_mib=mem_mib, image="tiny")


def make_state(
    template: Heartbeat = TEMPLATE, *, interval_s: float = 1.0, fence_after_s: float = 4.0
) -> AgentState:
    return AgentState(template, heartbeat_interval_s=interval_s, fence_after_s=fence_after_s)


def ack_for(
    hb: Heartbeat, *, interval_s: float = 1.0, fence_after_s: float = 4.0, digest: str = ""
) -> HeartbeatAck:
    return HeartbeatAck(
        host_id=hb.host_id,
        seq=hb.seq,
        scheduler_id="s1",
        heartbeat_interval_s=interval_s,
        fence_after_s=fence_after_s,
        inventory_digest=digest,
    )


def renew(agent: Agent, clock: FakeClock, *, sent_at_s: float | None = None) -> None:
    """Renew the lease as the scheduler does: ack a heartbeat sent at ``sent_at_s`` (default:
    now) with ``fence_after_s`` 4 s; the ack arrives now."""
    now_s = clock.now_s
    clock.now_s = now_s if sent_at_s is None else sent_at_s
    heartbeat = agent.next_heartbeat()
    clock.now_s = now_s
    agent.handle(AckReceived(ack_for(heartbeat)))


def make_agent(
    driver: FakeDriver, execlog: ExecLog, clock: FakeClock, *, leased: bool = True
) -> Agent:
    """An agent (on ``TEMPLATE``), holding a fresh lease unless ``leased`` is False."""
    agent = Agent(make_state(), driver, execlog, clock)
    if leased:
        renew(agent, clock)
    return agent


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver(Resources(4000, 8192))


@pytest.fixture
def execlog(tmp_path: Path) -> Iterator[ExecLog]:
    log = ExecLog(tmp_path / "h1" / "executions.jsonl", "h1")
    yield log
    log.close()


@pytest.fixture
def agent(driver: FakeDriver, execlog: ExecLog, clock: FakeClock) -> Agent:
    """An agent holding a fresh lease (renewed at ``clock``'s now, fence after 4 s)."""
    return make_agent(driver, execlog, clock)


def events(execlog: ExecLog) -> list[tuple[str, int, ExecEvent]]:
    return [(line.vm, line.gen, line.event) for line in read_execlog(execlog.path)]
