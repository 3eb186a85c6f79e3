"""``stratus scheduler`` and ``stratus agent`` as processes: the environment they read, the
signals they obey, and the name their help gives."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from cli.client import StratusClient
from common.errors import ApiError
from common.natsserver import NatsServer
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{sock.getsockname()[1]}"


Spawn = Callable[[list[str], dict[str, str]], tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"daemon-{len(procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**CLEAN_ENV, "PYTHONUNBUFFERED": "1", **env},
            )
        procs.append(proc)
        return proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


async def test_scheduler_takes_the_nats_url_from_the_environment(
    spawn: Spawn, nats_server: NatsServer, tmp_path: Path
) -> None:
    proc, log = spawn(
        ["scheduler", "--db", str(tmp_path / "s.db")], {"STRATUS_NATS": nats_server.url}
    )
    nc = await nats.connect(nats_server.url)
    client = StratusClient(nc, timeout_s=1.0)

    async def answers() -> bool:
        try:
            return await client.list_hosts() == []
        except ApiError:
            return False

    try:
        await wait_until(answers, timeout_s=20, message=f"the scheduler serving: {log}")
    finally:
        await nc.close()
    proc.terminate()
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_scheduler_that_cannot_reach_nats_exits_promptly_on_a_signal(
    spawn: Spawn, tmp_path: Path, sig: signal.Signals
) -> None:
    env = {"STRATUS_NATS": closed_url()}
    proc, log = spawn(["scheduler", "--db", str(tmp_path / "s.db")], env)
    await wait_until(
        lambda: "store loaded" in log.read_text(), timeout_s=20, message="the store loaded"
    )
    sent = time.monotonic()
    proc.send_signal(sig)
    status = proc.wait(timeout=10)
    assert time.monotonic() - sent < 3.0, log.read_text()
    assert status == 0, log.read_text()


@pytest.mark.parametrize("command", ["scheduler", "agent"])
def test_daemon_help_names_the_real_command(command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", command, "--help"],
        capture_output=True, text=True, timeout=30, check=False, env=CLEAN_ENV,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: stratus {command} ")
