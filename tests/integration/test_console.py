"""VM consoles over NATS with the fake driver: ``stratus vm logs`` and ``stratus vm console`` as
users run them (processes, stdin a pipe), against a real nats-server, the scheduler and an
agent. The agent running the VM answers; the CLI finds it with ``vm get``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from cli.client import StratusClient
from common import messages as m
from common.errors import ApiError
from rigs.cluster import Cluster
from tests.integration.helpers import wait_hosts_up

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(60)]

BOOT_LINE = b"STRATUS-READY vm=web\r\n# "


@dataclass(frozen=True)
class Run:
    status: int
    out: bytes
    err: str


@dataclass
class Cli:
    env: dict[str, str]

    async def spawn(self, *argv: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )  # fmt: skip

    async def run(self, *argv: str) -> Run:
        proc = await self.spawn(*argv)
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return Run(proc.returncode, out, err.decode())


async def read_until(proc: asyncio.subprocess.Process, wanted: bytes, seen: bytearray) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        while wanted not in seen:
            chunk = await proc.stdout.read(4096)
            assert chunk, f"output ended before {wanted!r}: {bytes(seen)!r}"
            seen += chunk


async def finish(proc: asyncio.subprocess.Process) -> Run:
    async with asyncio.timeout(10):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out, err.decode())


Create = Callable[[str], Awaitable[None]]


@pytest.fixture
async def cli(cluster: Cluster, client: StratusClient) -> AsyncIterator[Cli]:
    cluster.start_scheduler()
    cluster.start_agent("h1", capacity="4c/8g")
    await wait_hosts_up(client, 1)
    yield Cli({**os.environ, "STRATUS_NATS": cluster.nats.url})


async def create(cli: Cli, name: str = "web") -> None:
    created = await cli.run("vm", "create", name, "--size", "Small", "--wait")
    assert created.status == 0, created.err


async def test_logs_print_the_boot_log_and_tail_cuts_lines(cli: Cli) -> None:
    await create(cli)
    logs = await cli.run("vm", "logs", "web")
    assert logs.status == 0, logs.err
    assert logs.out.startswith(b"fake-bios: booting vm web generation ")
    assert logs.out.endswith(BOOT_LINE)
    tail = await cli.run("vm", "logs", "web", "--tail", "2")
    assert tail.out == BOOT_LINE
    as_json = await cli.run("vm", "logs", "web", "--tail", "1", "-o", "json")
    assert '"text": "# "' in as_json.out.decode() and '"host": "h1"' in as_json.out.decode()


async def test_console_echoes_input_and_detaches_at_end_of_input(cli: Cli) -> None:
    await create(cli)
    proc = await cli.spawn("vm", "console", "web")
    seen = bytearray()
    await read_until(proc, BOOT_LINE, seen)  # the recent output first
    assert proc.stdin is not None
    proc.stdin.write(b"hello console\n")
    await proc.stdin.drain()
    await read_until(proc, b"hello console\r\nhello console\r\n# ", seen)
    proc.stdin.close()
    done = await finish(proc)
    assert done.status == 0, done.err
    assert "detached from web (end of input)" in done.err
    assert seen.count(b"STRATUS-READY") == 1  # live output spliced on the tail: no repeats
    logs = await cli.run("vm", "logs", "web", "--tail", "2")
    assert logs.out == b"hello console\r\n# "


async def test_ctrl_bracket_detaches_and_what_precedes_it_is_sent(cli: Cli) -> None:
    await create(cli)
    proc = await cli.spawn("vm", "console", "web")
    seen = bytearray()
    await read_until(proc, BOOT_LINE, seen)
    assert proc.stdin is not None
    proc.stdin.write(b"bye\n\x1dnot sent\n")
    await proc.stdin.drain()
    done = await finish(proc)
    assert done.status == 0, done.err
    assert "detached from web\n" in done.err
    logs = await cli.run("vm", "logs", "web")
    assert logs.out.endswith(b"bye\r\nbye\r\n# ")
    assert b"not sent" not in logs.out


async def test_a_followed_console_closes_when_the_vm_stops(cli: Cli) -> None:
    await create(cli)
    proc = await cli.spawn("vm", "logs", "web", "--follow")
    seen = bytearray()
    await read_until(proc, BOOT_LINE, seen)
    stopped = await cli.run("vm", "stop", "web", "--wait")
    assert stopped.status == 0, stopped.err
    done = await finish(proc)
    assert done.status == 0, done.err
    assert "console of web closed: vm left this host" in done.err


async def test_errors_for_unknown_and_stopped_vms(cli: Cli) -> None:
    unknown = await cli.run("vm", "logs", "nope")
    assert unknown.status == 1
    assert unknown.err.startswith("error: not_found:")
    await create(cli)
    assert (await cli.run("vm", "stop", "web", "--wait")).status == 0
    for verb in ("logs", "console"):
        stopped = await cli.run("vm", verb, "web")
        assert stopped.status == 1
        assert stopped.err.strip() == (
            "error: invalid_state: vm web is not running on any host (state stopped): "
            "it has no console"
        )
    as_json = await cli.run("-o", "json", "vm", "console", "web")
    assert json.loads(as_json.err)["error"]["code"] == "invalid_state"


async def test_the_agent_answers_only_for_its_own_vms(cli: Cli, client: StratusClient) -> None:
    await create(cli)
    with pytest.raises(ApiError) as caught:
        await client.console_tail("h1", "other", 100)
    assert caught.value.code is m.ErrorCode.NOT_FOUND
    assert caught.value.detail == "vm other does not run on host h1"
    with pytest.raises(ApiError) as caught:
        await client.console_type("h2", "web", b"x")
    assert caught.value.code is m.ErrorCode.UNAVAILABLE
    reply = await client.console_tail("h1", "web", 2)
    assert reply.writable and reply.output is not None and reply.output.data == b"# "
