"""Builders for host agent tests: a fake clock, VM specs, and an agent on a FakeDriver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.ids import HostId
from common.messages import VmSpec
from common.resources import Resources
from hostagent.agent import Agent
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecEvent, ExecLog, read_execlog


class FakeClock:
    def __init__(self, now_s: float = 100.0) -> None:
        self.now_s = now_s

    def monotonic_s(self) -> float:
        return self.now_s

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now_s, UTC)


def make_spec(name: str = "vm-1", *, cpu_milli: int = 1000, mem_mib: int = 1024) -> VmSpec:
    return VmSpec(name=name, size="Small", cpu_milli=cpu_milli, mem_mib=mem_mib, image="tiny")


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
    agent = Agent(HostId("h1"), driver, execlog, clock)
    agent.renew_lease(clock.now_s, 4.0)
    return agent


def events(execlog: ExecLog) -> list[tuple[str, int, ExecEvent]]:
    return [(line.vm, line.gen, line.event) for line in read_execlog(execlog.path)]
