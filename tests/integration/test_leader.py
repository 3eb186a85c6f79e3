"""Leader lease, standby and takeover with real processes: any number of schedulers run, one
leads, a standby takes over from a killed leader, and no scheduler trouble hurts a VM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from cli.client import StratusClient
from common import codec, subjects
from common.errors import ApiError
from common.messages import CreateVm, HostEvent, HostState, VmState
from common.natsserver import NatsServer
from rigs.cluster import overlapping_executions
from scheduler.shell.leader import LEASE_BUCKET, LEASE_KEY, LeaseHolder
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

HA_TIMINGS = {"heartbeat_interval_s": 0.3, "fence_after_s": 2.5, "dead_after_s": 4.0}
"""A takeover (about lease_s + catch-up) fits inside fence_after_s: VMs never even pause."""
LEASE_S = 1.2


@dataclass
class HaCluster:
    url: str
    workdir: Path
    replicas: int = 1
    schedulers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with (self.workdir / log_name).open("ab") as log:
            return subprocess.Popen(
                [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def start_scheduler(self, name: str, *extra: str) -> None:
        t = HA_TIMINGS
        args = ["-m", "scheduler", "--nats", self.url, "--db", str(self.workdir / f"{name}.db")]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        args += ["--fence-after", str(t["fence_after_s"]), "--dead-after", str(t["dead_after_s"])]
        args += ["--lease", str(LEASE_S), "--replicas", str(self.replicas)]
        self.schedulers[name] = self._spawn([*args, "--log-level", "DEBUG", *extra], f"{name}.log")

    def node_of(self, name: str) -> str:
        return (self.workdir / f"{name}.db.node").read_text().strip()

    def start_agent(self, host: str) -> None:
        t = HA_TIMINGS
        args = ["-m", "hostagent", "--nats", self.url, "--host-id", host, "--capacity", "16c/64g"]
        args += ["--fault-domain", f"fd-{host}", "--data-dir", str(self.workdir / "agents")]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        args += ["--fence-after", str(t["fence_after_s"]), "--log-level", "DEBUG"]
        self.agents[host] = self._spawn(args, f"agent-{host}.log")

    def signal_scheduler(self, name: str, sig: signal.Signals) -> None:
        proc = self.schedulers[name]
        proc.send_signal(sig)
        if sig is signal.SIGKILL:
            proc.wait(timeout=10)
            del self.schedulers[name]

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def execution_log(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for path in (self.workdir / "agents").glob("*/executions.jsonl"):
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sorted(rows, key=lambda row: float(row["t"]))  # type: ignore[arg-type]

    def stop(self) -> None:
        procs = [*self.agents.values(), *self.schedulers.values()]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


async def leader_node(nc: Client) -> str | None:
    try:
        kv = await nc.jetstream(timeout=1.0).key_value(LEASE_BUCKET)
        entry = await kv.get(LEASE_KEY)
    except Exception:  # no bucket or no key yet: nobody leads
        return None
    return msgspec.json.decode(entry.value or b"", type=LeaseHolder).node


async def has_leader(nc: Client) -> bool:
    return await leader_node(nc) is not None


async def leader_name(ha: HaCluster, nc: Client) -> str | None:
    node = await leader_node(nc)
    return next((name for name in ha.schedulers if ha.node_of(name) == node), None)


async def host_downs(nc: Client) -> list[HostEvent]:
    js = nc.jetstream()
    sub = await js.subscribe(f"{subjects.ROOT}.events.host.>", ordered_consumer=True)
    downs: list[HostEvent] = []
    while True:
        try:
            msg = await sub.next_msg(timeout=1.0)
        except Exception:  # nats' timeout: no more events
            break
        event = codec.event.decode(msg.data)
        if isinstance(event, HostEvent) and event.state is HostState.DOWN:
            downs.append(event)
    await sub.unsubscribe()
    return downs


@pytest.fixture
def ha(nats_server: NatsServer, tmp_path: Path) -> Iterator[HaCluster]:
    cluster = HaCluster(nats_server.url, tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def api(nc: Client) -> AsyncIterator[StratusClient]:
    yield StratusClient(nc, timeout_s=2.0)


async def start_pair(ha: HaCluster, api: StratusClient, nc: Client, hosts: int = 3) -> str:
    """Two schedulers and ``hosts`` agents; returns the leader's name."""
    ha.start_scheduler("s1")
    await wait_until(lambda: has_leader(nc), timeout_s=20, message="a leader")
    ha.start_scheduler("s2")
    for i in range(1, hosts + 1):
        ha.start_agent(f"h{i}")
    await wait_hosts_up(api, hosts)
    await wait_until(
        lambda: "scheduler standby" in ha.log("s2"), timeout_s=20, message="s2 standing by"
    )
    name = await leader_name(ha, nc)
    assert name == "s1"
    return name


async def test_kill_9_of_the_leader_under_load_the_standby_serves_and_nothing_is_lost(
    ha: HaCluster, api: StratusClient, nc: Client
) -> None:
    leader = await start_pair(ha, api, nc)
    names = [f"vm-{i:02d}" for i in range(12)]
    for name in names:
        await api.create_vm(CreateVm(name=name, size="Small"))
    before = await wait_all_running(api, names)
    acked: list[str] = []
    answered_at: list[tuple[float, float]] = []
    """(sent, answered) monotonic times of every acknowledged request."""
    quick = StratusClient(nc, timeout_s=0.5)

    stopping = asyncio.Event()

    async def load() -> None:
        i = 0
        while not stopping.is_set():  # nats-py turns a cancelled request into its TimeoutError
            name = f"load-{i:03d}"
            sent_s = time.monotonic()
            try:
                await quick.create_vm(CreateVm(name=name, size="ExtraSmall", request_id=name))
            except (ApiError, nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.02)  # back off: no leader for a moment (pacing only)
                continue  # retried with the same request id: applied once
            acked.append(name)
            answered_at.append((sent_s, time.monotonic()))
            i += 1

    loader = asyncio.create_task(load())
    await wait_until(lambda: len(acked) >= 5, timeout_s=20, message="load")
    killed_at = time.monotonic()
    ha.signal_scheduler(leader, signal.SIGKILL)
    await wait_until(
        lambda: any(sent > killed_at for sent, _ in answered_at),
        timeout_s=10,
        message="the standby serving",
    )
    takeover_s = min(done for sent, done in answered_at if sent > killed_at) - killed_at
    count = len(acked)
    await wait_until(lambda: len(acked) > count + 5, timeout_s=10, message="more load")
    stopping.set()
    await asyncio.gather(loader, return_exceptions=True)

    assert takeover_s <= 5.0, takeover_s
    assert await leader_name(ha, nc) == "s2"
    after = await wait_all_running(api, names + acked, timeout_s=30)
    for name in names:  # the VMs stayed where they were, at the same generation
        assert (after[name].host, after[name].generation) == (
            before[name].host,
            before[name].generation,
        )
    assert await host_downs(nc) == []
    assert overlapping_executions(ha.execution_log(), {}) == []
    print(f"takeover_s={takeover_s:.2f}")


async def test_a_second_scheduler_with_an_empty_store_destroys_nothing(
    ha: HaCluster, api: StratusClient, nc: Client
) -> None:
    ha.start_scheduler("s1")
    for i in range(1, 3):
        ha.start_agent(f"h{i}")
    await wait_hosts_up(api, 2)
    names = [f"vm-{i}" for i in range(6)]
    for name in names:
        await api.create_vm(CreateVm(name=name, size="Small"))
    await wait_all_running(api, names)
    ha.start_scheduler("mistake")  # the original bug: a fresh, empty store beside the first
    await wait_until(
        lambda: "scheduler standby" in ha.log("mistake"), timeout_s=20, message="a standby"
    )
    settle = time.monotonic() + 3 * LEASE_S + HA_TIMINGS["dead_after_s"]
    await wait_until(lambda: time.monotonic() > settle, timeout_s=20, message="time to fight")
    events = {str(row["event"]) for row in ha.execution_log()}
    assert "destroy" not in events and "stop" not in events
    assert "scheduler leading" not in ha.log("mistake")
    after = await wait_all_running(api, names)
    assert all(vm.state is VmState.RUNNING for vm in after.values())


async def test_a_second_scheduler_on_the_same_store_exits_with_a_clear_error(
    ha: HaCluster, nc: Client
) -> None:
    ha.start_scheduler("s1")
    await wait_until(lambda: has_leader(nc), timeout_s=20, message="a leader")
    db = ha.workdir / "s1.db"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "scheduler", "--nats", ha.url, "--db", str(db)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert b"another scheduler runs on the store" in result.stdout + result.stderr


async def start_with_vms(
    ha: HaCluster, api: StratusClient, nc: Client, *, standby: bool
) -> dict[str, object]:
    if standby:
        await start_pair(ha, api, nc)
    else:
        ha.start_scheduler("s1")
        for i in range(1, 4):
            ha.start_agent(f"h{i}")
        await wait_hosts_up(api, 3)
    names = [f"vm-{i}" for i in range(9)]
    for name in names:
        await api.create_vm(CreateVm(name=name, size="Small"))
    before = await wait_all_running(api, names)
    return {name: (vm.host, vm.generation) for name, vm in before.items()}


async def wait_s(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    await wait_until(lambda: time.monotonic() > deadline, timeout_s=seconds + 5, message="time")


async def test_nats_frozen_longer_than_dead_after_declares_no_host_dead(
    ha: HaCluster, api: StratusClient, nc: Client, nats_server: NatsServer
) -> None:
    placed = await start_with_vms(ha, api, nc, standby=False)
    nats_server.process.send_signal(signal.SIGSTOP)
    try:
        await wait_s(HA_TIMINGS["dead_after_s"] + 1.5)
    finally:
        nats_server.process.send_signal(signal.SIGCONT)
    after = await wait_all_running(api, list(placed), timeout_s=30)
    assert {name: (vm.host, vm.generation) for name, vm in after.items()} == placed
    assert await host_downs(nc) == []


async def test_a_frozen_leader_is_replaced_and_acts_on_nothing_when_it_thaws(
    ha: HaCluster, api: StratusClient, nc: Client
) -> None:
    placed = await start_with_vms(ha, api, nc, standby=True)
    ha.signal_scheduler("s1", signal.SIGSTOP)
    try:
        await wait_until(
            lambda: "scheduler leading" in ha.log("s2"), timeout_s=20, message="s2 leading"
        )
        await wait_s(HA_TIMINGS["dead_after_s"])
    finally:
        ha.signal_scheduler("s1", signal.SIGCONT)
    await wait_until(
        lambda: "scheduler term ended" in ha.log("s1"), timeout_s=20, message="s1 stepping down"
    )
    await api.create_vm(CreateVm(name="after", size="Small"))
    after = await wait_all_running(api, [*placed, "after"], timeout_s=30)
    assert {name: (after[name].host, after[name].generation) for name in placed} == placed
    assert await host_downs(nc) == []
    assert overlapping_executions(ha.execution_log(), {}) == []
    assert await leader_name(ha, nc) == "s2"
