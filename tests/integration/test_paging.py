"""Lists longer than one NATS message, as users meet them: a nats-server whose ``max_payload``
is 8 KiB (the 1 MiB default, reached by a few thousand VMs, made small so that a few dozen
VMs are enough), a real scheduler and an agent. ``stratus vm list``, the client and the HTTP
API each return every VM exactly once, page after page; no reply is dropped for its size."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import nats
import pytest
from nats.aio.client import Client

from cli.client import StratusClient
from common import subjects
from common.config import SchedulerConfig
from common.messages import CreateVm
from common.natsserver import NatsServer, start_nats_server
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.shell.app import SchedulerApp
from tests.conftest import _require_nats
from tests.integration.helpers import wait_hosts_up

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(60)]

MAX_PAYLOAD = 8 * 1024
VMS = [f"web-{i:02}" for i in range(40)]
"""Their list (some 500 bytes a VM) is a few times the largest message."""


@dataclass
class Small:
    """A cluster on a server that takes messages of at most ``MAX_PAYLOAD`` bytes."""

    server: NatsServer
    nc: Client
    client: StratusClient
    http: aiohttp.ClientSession


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Small]:
    _require_nats()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    server = start_nats_server(tmp_path / "nats", extra_args=("-c", str(conf)))
    cluster = Cluster(server, tmp_path)
    config = msgspec.convert(
        {
            "nats_url": server.url,
            "db_path": str(tmp_path / "scheduler.db"),
            "http_listen": "127.0.0.1:0",
            **FAST_TIMINGS,
        },
        SchedulerConfig,
    )
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        nc = await nats.connect(server.url, connect_timeout=2, max_reconnect_attempts=0)
        assert nc.max_payload == MAX_PAYLOAD
        client = StratusClient(nc, timeout_s=5.0)
        cluster.start_agent("h1", capacity="2c/4g")  # room for a few: the rest wait, listed
        await wait_hosts_up(client, 1)
        for name in VMS:
            await client.create_vm(CreateVm(name=name, size="Small"))
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            yield Small(server, nc, client, http)
        await nc.close()
    finally:
        cluster.stop()
        app.stop()
        await asyncio.wait_for(task, timeout=10)
        server.stop()


async def test_a_client_that_knows_no_paging_gets_a_first_page_not_silence(small: Small) -> None:
    msg = await small.nc.request(subjects.VM_LIST, b"{}", timeout=5)
    assert len(msg.data) <= MAX_PAYLOAD
    reply = msgspec.json.decode(msg.data)
    first = [vm["name"] for vm in reply["vms"]]
    assert first == VMS[: len(first)] and 0 < len(first) < len(VMS)
    assert reply["next"] == first[-1]


async def test_the_client_lists_every_vm_once_across_pages(small: Small) -> None:
    assert [vm.name for vm in await small.client.list_vms()] == VMS


async def test_stratus_vm_list_shows_every_vm_once(small: Small) -> None:
    env = {**os.environ, "STRATUS_NATS": small.server.url}

    async def stratus(*argv: str) -> tuple[str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode(), err.decode()

    out, _ = await stratus("vm", "list", "-o", "json")
    assert [vm["name"] for vm in json.loads(out)] == VMS
    out, _ = await stratus("vm", "list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == VMS
    out, err = await stratus("vm", "list", "-o", "json", "--limit", "5", "--marker", VMS[9])
    assert [vm["name"] for vm in json.loads(out)] == VMS[10:15]
    assert f"--marker {VMS[14]}" in err
