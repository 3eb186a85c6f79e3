"""The agent as a real process against a real nats-server; the test plays the scheduler."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from common import codec, subjects
from common.messages import (
    AgentCommand,
    DeleteVm,
    Heartbeat,
    HeartbeatAck,
    HostCommands,
    ObservedState,
    ObservedVm,
    ResumeVm,
    StartVm,
    VmSpec,
)
from common.natsserver import NatsServer, start_nats_server
from hostagent.execlog import ExecEvent, execlog_path, read_execlog
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2
FENCE_AFTER_S = 0.8
REPO = Path(__file__).resolve().parents[2]


class Agent:
    """The agent subprocess and where it writes."""

    def __init__(
        self, nats_url: str, tmp_path: Path, host_id: str = "h1", extra_args: Sequence[str] = ()
    ) -> None:
        self.data_dir = tmp_path / "agent-data"
        self.stderr_path = tmp_path / f"agent-{host_id}.log"
        self.execlog = execlog_path(self.data_dir, host_id)
        args = [sys.executable, "-m", "hostagent", "--nats", nats_url, "--host-id", host_id]
        args += ["--capacity", "4c/8g", "--data-dir", str(self.data_dir)]
        args += ["--heartbeat-interval", str(INTERVAL_S), "--fence-after", str(FENCE_AFTER_S)]
        args += extra_args
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                args, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )

    def events(self, vm: str) -> list[tuple[int, ExecEvent]]:
        if not self.execlog.exists():
            return []
        return [(line.gen, line.event) for line in read_execlog(self.execlog) if line.vm == vm]

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


class FakeScheduler:
    """Answers heartbeats like the scheduler (while ``acking``) and sends commands."""

    def __init__(self, nc: Client, host_id: str = "h1") -> None:
        self.nc = nc
        self.host_id = host_id
        self.acking = True
        self.heartbeats: list[Heartbeat] = []
        self.acked_seqs: list[int] = []
        self.last_acked_at: float = 0.0
        """Wall time the last acked heartbeat arrived (about when the agent sent it)."""

    async def start(self) -> None:
        await self.nc.subscribe(subjects.host_heartbeat(self.host_id), cb=self._on_heartbeat)

    async def _on_heartbeat(self, msg: Msg) -> None:
        heartbeat = codec.heartbeat.decode(msg.data)
        self.heartbeats.append(heartbeat)
        if self.acking:
            ack = HeartbeatAck(
                host_id=heartbeat.host_id,
                seq=heartbeat.seq,
                scheduler_id="test",
                heartbeat_interval_s=INTERVAL_S,
                fence_after_s=FENCE_AFTER_S,
            )
            self.last_acked_at = time.time()
            await msg.respond(codec.encode(ack))
            self.acked_seqs.append(heartbeat.seq)

    @property
    def last(self) -> Heartbeat | None:
        return self.heartbeats[-1] if self.heartbeats else None

    def vm(self, name: str) -> ObservedVm | None:
        last = self.last
        return next((vm for vm in last.vms if vm.name == name), None) if last else None

    def vm_state(self, name: str) -> ObservedState | None:
        vm = self.vm(name)
        return vm.state if vm else None

    async def send(self, *commands: AgentCommand, host_id: str = "h1") -> None:
        body = HostCommands(host_id=host_id, commands=list(commands))
        await self.nc.publish(subjects.host_commands(self.host_id), codec.encode(body))
        await self.nc.flush()

    async def wait_for_heartbeat_after(self, count: int, timeout_s: float = 2.0) -> Heartbeat:
        await wait_until(lambda: len(self.heartbeats) > count, timeout_s=timeout_s)
        return self.heartbeats[-1]

    async def wait_acked(self) -> None:
        """Wait until the agent has had an ack and reported after it (it holds a lease); the
        first wait covers the agent's process starting, which a loaded machine slows."""
        await wait_until(lambda: bool(self.acked_seqs), timeout_s=15, message="an acked heartbeat")
        acked = self.acked_seqs[-1]
        await wait_until(
            lambda: self.last is not None and self.last.seq > acked and not self.last.fenced,
            timeout_s=3,
            message="a heartbeat after the ack",
        )


def spec(name: str = "vm-1", mem_mib: int = 1024) -> VmSpec:
    return VmSpec(name=name, size="Small", cpu_milli=1000, mem_mib=mem_mib, image="tiny")


@pytest.fixture
def agent(nats_server: NatsServer, tmp_path: Path) -> Iterator[Agent]:
    process = Agent(nats_server.url, tmp_path)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def scheduler(nc: Client, agent: Agent) -> AsyncIterator[FakeScheduler]:
    fake = FakeScheduler(nc)
    await fake.start()
    yield fake


async def test_heartbeats_register_the_host(scheduler: FakeScheduler) -> None:
    await scheduler.wait_acked()
    first, last = scheduler.heartbeats[0], scheduler.heartbeats[-1]
    assert (first.host_id, first.capacity.cpu_milli, first.capacity.mem_mib) == ("h1", 4000, 8192)
    assert first.boot_id == last.boot_id and last.seq > first.seq
    assert (first.driver, first.vms, first.fenced) == ("fake", [], False)


async def test_vm_lifecycle_with_fencing(scheduler: FakeScheduler, agent: Agent) -> None:
    await scheduler.wait_acked()
    await scheduler.send(StartVm(vm=spec(), generation=1))
    await wait_until(lambda: scheduler.vm_state("vm-1") is ObservedState.RUNNING, timeout_s=2)
    assert agent.events("vm-1") == [(1, ExecEvent.START), (1, ExecEvent.RUNNING)]

    scheduler.acking = False  # the scheduler goes silent: the lease runs out
    await wait_until(
        lambda: scheduler.vm_state("vm-1") is ObservedState.PAUSED,
        timeout_s=FENCE_AFTER_S + 1.5,
        message="vm paused by the fence",
    )
    assert scheduler.last is not None and scheduler.last.fenced
    assert agent.events("vm-1")[-1] == (1, ExecEvent.PAUSE)
    paused_at = [line.t for line in read_execlog(agent.execlog) if line.event is ExecEvent.PAUSE]
    # The lease ran from the send of the last acked heartbeat; the watchdog looks every 50 ms.
    assert FENCE_AFTER_S - 0.05 <= paused_at[0] - scheduler.last_acked_at <= FENCE_AFTER_S + 0.5
    vm = scheduler.vm("vm-1")
    assert vm is not None and vm.generation == 1

    scheduler.acking = True  # back in touch: unfenced, but the vm stays paused
    await scheduler.wait_acked()
    seen = len(scheduler.heartbeats)
    await scheduler.wait_for_heartbeat_after(seen + 2)
    assert scheduler.vm_state("vm-1") is ObservedState.PAUSED

    await scheduler.send(ResumeVm(name="vm-1", generation=2))  # not its generation
    await scheduler.send(ResumeVm(name="vm-1", generation=1))
    await wait_until(lambda: scheduler.vm_state("vm-1") is ObservedState.RUNNING, timeout_s=2)
    assert agent.events("vm-1")[-1] == (1, ExecEvent.RESUME)

    await scheduler.send(DeleteVm(name="vm-1", generation=1))
    await wait_until(lambda: scheduler.last is not None and not scheduler.last.vms, timeout_s=2)
    assert [event for _, event in agent.events("vm-1")] == [
        ExecEvent.START,
        ExecEvent.RUNNING,
        ExecEvent.PAUSE,
        ExecEvent.RESUME,
        ExecEvent.DESTROY,
    ]


async def test_bad_commands_are_dropped(scheduler: FakeScheduler, agent: Agent) -> None:
    await scheduler.wait_acked()
    await scheduler.nc.publish(subjects.host_commands("h1"), b'{"host_id": "h1", "commands": 7}')
    await scheduler.nc.publish(subjects.host_commands("h1"), b"\xff not json")
    await scheduler.send(StartVm(vm=spec("vm-x"), generation=1), host_id="h2")
    await scheduler.send(StartVm(vm=spec("vm-big", mem_mib=64 * 1024), generation=1))
    await scheduler.send(StartVm(vm=spec("vm-ok"), generation=1))
    await wait_until(lambda: scheduler.vm_state("vm-ok") is ObservedState.RUNNING, timeout_s=2)
    big = scheduler.vm("vm-big")
    assert big is not None and big.state is ObservedState.FAILED and big.retryable
    assert "insufficient memory" in big.reason
    assert scheduler.vm("vm-x") is None
    log = agent.stderr()
    assert log.count("malformed commands dropped") == 2
    assert "commands for another host dropped" in log


async def test_sigterm_exits_zero(scheduler: FakeScheduler, agent: Agent) -> None:
    await scheduler.wait_acked()
    await scheduler.send(StartVm(vm=spec(), generation=1))
    await wait_until(lambda: scheduler.vm_state("vm-1") is ObservedState.RUNNING, timeout_s=2)
    agent.process.send_signal(signal.SIGTERM)
    await wait_until(lambda: agent.process.poll() is not None, timeout_s=5)
    assert agent.process.returncode == 0, agent.stderr()


async def test_agent_waits_for_the_server(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = Agent(f"nats://127.0.0.1:{port}", tmp_path, extra_args=["--log-level", "DEBUG"])
    server: NatsServer | None = None
    try:
        await wait_until(
            lambda: agent.stderr().count("nats error") >= 2,
            timeout_s=5,
            message="connection attempts",
        )
        assert agent.process.poll() is None
        server = start_nats_server(tmp_path / "nats", port=port)
        nc = await nats.connect(server.url, max_reconnect_attempts=0)
        try:
            scheduler = FakeScheduler(nc)
            await scheduler.start()
            await scheduler.wait_acked()
        finally:
            await nc.close()
    finally:
        agent.stop()
        if server is not None:
            server.stop()
