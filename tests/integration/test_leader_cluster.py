"""The HA topology for real: a 3-node NATS cluster (R3 streams, KV lease and state log), two
schedulers and agents. Kill -9 of the leader and of a NATS node lose nothing; a leader cut off
from the NATS majority stops acting before its successor starts."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from cli.client import StratusClient
from common.errors import ApiError
from common.messages import CreateVm, HostEvent
from rigs.cluster import overlapping_executions
from rigs.natscluster import NatsCluster
from scheduler.shell.statelog import STATE_STREAM
from tests.conftest import _require_nats
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.test_leader import (
    HaCluster,
    has_leader,
    host_downs,
    leader_name,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def nats3(tmp_path: Path) -> Iterator[NatsCluster]:
    _require_nats()
    cluster = NatsCluster.create(tmp_path / "nats")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def nc3(nats3: NatsCluster) -> AsyncIterator[Client]:
    await nats3.wait_ready()
    nc = await nats.connect(nats3.urls[1:], connect_timeout=2, max_reconnect_attempts=-1)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
def ha3(nats3: NatsCluster, tmp_path: Path) -> Iterator[HaCluster]:
    """Agents and the test's client use nodes 2 and 3; each scheduler gets its own URL."""
    cluster = HaCluster(",".join(nats3.urls[1:]), tmp_path / "ha", replicas=3)
    cluster.workdir.mkdir()
    try:
        yield cluster
    finally:
        cluster.stop()


class Load:
    """Creates VMs one after another (same request id on retry); records what was acked."""

    def __init__(self, nc: Client) -> None:
        self.client = StratusClient(nc, timeout_s=0.5)
        self.acked: list[str] = []
        self.answered: list[tuple[float, float]] = []
        self.task: asyncio.Task[None] | None = None
        self.stopping = False

    async def _run(self) -> None:
        i = 0
        while not self.stopping:  # nats-py turns a cancelled request into its TimeoutError
            name = f"load-{i:03d}"
            sent_s = time.monotonic()
            try:
                await self.client.create_vm(CreateVm(name=name, size="ExtraSmall", request_id=name))
            except (ApiError, nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.02)  # back off: no leader for a moment (pacing only)
                continue
            self.acked.append(name)
            self.answered.append((sent_s, time.monotonic()))
            i += 1

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def more(self, count: int, timeout_s: float = 30.0) -> None:
        target = len(self.acked) + count
        await wait_until(lambda: len(self.acked) >= target, timeout_s=timeout_s, message="load")

    async def stop(self) -> None:
        assert self.task is not None
        self.stopping = True
        await asyncio.gather(self.task, return_exceptions=True)


async def test_kill_9_of_the_leader_and_of_a_nats_node_lose_nothing(
    ha3: HaCluster, nats3: NatsCluster, nc3: Client
) -> None:
    api = StratusClient(nc3, timeout_s=5.0)
    ha3.start_scheduler("s1", "--nats", nats3.url)
    await wait_until(lambda: has_leader(nc3), timeout_s=30, message="a leader")
    ha3.start_scheduler("s2", "--nats", nats3.url)
    for i in range(1, 4):
        ha3.start_agent(f"h{i}")
    await wait_hosts_up(api, 3, timeout_s=30)
    load = Load(nc3)
    load.start()
    await load.more(5)

    killed_at = time.monotonic()
    ha3.signal_scheduler("s1", signal.SIGKILL)
    await wait_until(
        lambda: any(sent > killed_at for sent, _ in load.answered),
        timeout_s=20,
        message="the standby serving",
    )
    takeover_s = min(done for sent, done in load.answered if sent > killed_at) - killed_at
    await load.more(5)

    nats3.kill_node(nats3.nodes[0])  # one NATS node dies: R3 keeps everything
    await load.more(5)
    await load.stop()

    async def s2_leads() -> bool:
        return await leader_name(ha3, nc3) == "s2"

    await wait_until(s2_leads, timeout_s=30, message="s2 leading after the node loss")
    info = await nc3.jetstream().stream_info(STATE_STREAM)
    assert info.config.num_replicas == 3
    await wait_all_running(api, load.acked, timeout_s=30)
    assert await downs_after_node_loss(nc3) == []
    assert overlapping_executions(ha3.execution_log(), {}) == []
    assert takeover_s <= 5.0, takeover_s
    print(f"takeover_s={takeover_s:.2f} acked={len(load.acked)}")


async def downs_after_node_loss(nc: Client) -> list[HostEvent]:
    """Host-down events, read once the events stream answers again (its stream leader may be
    re-elected after a node loss, and the first consumer creation time out)."""
    downs: list[HostEvent] = []

    async def read() -> bool:
        try:
            downs[:] = await host_downs(nc)
        except (nats.errors.Error, TimeoutError):
            return False
        return True

    await wait_until(read, timeout_s=30, message="the events stream answering")
    return downs


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(%s)", re.MULTILINE)


def _first(log: str, text: str) -> datetime:
    match = re.search(_STAMP.pattern % re.escape(text), log, re.MULTILINE)
    assert match is not None, f"{text!r} not logged"
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.xfail(
    reason="open: the old leader stops before the new one leads (asserted first), but the new "
    "leader then answers no API request within 5 s while node 1 stays frozen",
    strict=False,
)
async def test_a_leader_cut_off_from_the_nats_majority_stops_before_the_new_one_acts(
    ha3: HaCluster, nats3: NatsCluster, nc3: Client
) -> None:
    api = StratusClient(nc3, timeout_s=5.0)
    ha3.start_scheduler("s1", "--nats", nats3.urls[0])  # the leader sees only node 1
    await wait_until(lambda: has_leader(nc3), timeout_s=30, message="a leader")
    ha3.start_scheduler("s2", "--nats", ",".join(nats3.urls[1:]))
    for i in range(1, 4):
        ha3.start_agent(f"h{i}")
    await wait_hosts_up(api, 3, timeout_s=30)
    names = [f"vm-{i}" for i in range(6)]
    for name in names:
        await api.create_vm(CreateVm(name=name, size="Small"))
    await wait_all_running(api, names, timeout_s=30)

    nats3.freeze(nats3.nodes[0])  # the leader's only server stops answering
    await wait_until(
        lambda: "scheduler leading" in ha3.log("s2"), timeout_s=60, message="s2 leading"
    )
    stopped = _first(ha3.log("s1"), "stepping down")
    started = _first(ha3.log("s2"), "scheduler leading")
    assert stopped < started
    await api.create_vm(CreateVm(name="after", size="Small"))
    await wait_all_running(api, [*names, "after"], timeout_s=30)
    agent_logs = "".join(ha3.log(f"agent-h{i}") for i in range(1, 4))
    assert "deposed leader refused" not in agent_logs
    assert overlapping_executions(ha3.execution_log(), {}) == []
    nats3.thaw(nats3.nodes[0])
