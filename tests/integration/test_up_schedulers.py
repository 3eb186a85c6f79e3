"""``stratus up --schedulers 2``: a leader and a standby on their own stores; the output says
which leads, and a kill -9 of the leader is survived (the standby takes over, reported in the
output, and the cluster keeps serving: nothing lost, no host declared down)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest

from cli.client import StratusClient
from common.errors import ApiError
from common.messages import CreateVm
from tests.conftest import _require_nats
from tests.integration.helpers import wait_all_running
from tests.integration.test_leader import host_downs
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Up:
    process: subprocess.Popen[str]
    nats_port: int
    printed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._read, name="stratus-up-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.printed.append(line)

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in list(self.printed) if (m := re.search(pattern, line))), None)

    async def read_until(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        """Wait until a printed line matches ``pattern``; that match."""
        await wait_until(
            lambda: self.find(pattern) is not None or self.process.poll() is not None,
            timeout_s=timeout_s,
            message=f"{pattern!r} printed",
        )
        match = self.find(pattern)
        assert match is not None, "stratus up ended:\n" + "".join(self.printed)
        return match

    def pid_of(self, name: str) -> int:
        match = self.find(rf"^\s+{re.escape(name)}\s+pid (\d+)")
        assert match is not None, f"no pid for {name} in:\n" + "".join(self.printed)
        return int(match[1])


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    _require_nats()
    port = _free_port()
    argv = [sys.executable, "-m", "cli", "up", "--hosts", "2", "--schedulers", "2"]
    argv += ["--data-dir", str(tmp_path / "up"), "--nats-port", str(port)]
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    up = None
    try:
        up = Up(process, port)
        yield up
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if up is not None:
            up.reader.join(timeout=10)  # ends at the end of the output
        if process.stdout is not None:
            process.stdout.close()


async def test_up_with_two_schedulers_survives_a_kill_of_the_leader(up: Up) -> None:
    await up.read_until("hosts up in")
    leader = (await up.read_until(r"^\s+(\S+)\s+leading"))[1]
    standby = (await up.read_until(r"^\s+(\S+)\s+standby"))[1]  # printed with the leader
    assert {leader, standby} == {"scheduler", "scheduler-2"}
    nc = await nats.connect(f"nats://127.0.0.1:{up.nats_port}", max_reconnect_attempts=-1)
    try:
        client = StratusClient(nc, timeout_s=1.0)
        await client.create_vm(CreateVm(name="before", size="Small"))
        before = (await wait_all_running(client, ["before"]))["before"]

        os.kill(up.pid_of(leader), signal.SIGKILL)
        await up.read_until(rf"{leader} exited with code -9")
        await up.read_until(rf"{standby} leads now \(was {leader}\)", timeout_s=30)

        async def created() -> bool:
            try:  # the same request id every time: created once
                await client.create_vm(CreateVm(name="after", size="Small", request_id="rq-a"))
            except (ApiError, nats.errors.Error, TimeoutError):
                return False
            return True

        await wait_until(created, timeout_s=20, interval_s=0.2, message="the standby serving")
        after = await wait_all_running(client, ["before", "after"], timeout_s=30)
        assert (after["before"].host, after["before"].generation) == (
            before.host,
            before.generation,
        ), "the VM stayed where it ran"
        assert await host_downs(nc) == []
    finally:
        await nc.close()
