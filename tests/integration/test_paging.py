"""Lists longer than one NATS message, as users meet them: a nats-server whose ``max_payload``
is 8 KiB (the 1 MiB default, reached by a few thousand VMs, made small so that a few dozen
VMs are enough), a real scheduler and an agent. ``stratus vm list``, the client and the HTTP
API each return every VM exactly once, page after page; no reply is dropped for its size."""

from __future__ import annotations

import asyncio
import json
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
from tests.integration.browser import CdpError, chromium_page, find_chromium
from tests.integration.helpers import run_stratus, wait_hosts_up
from tests.waiting import wait_until

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
    url: str
    """The scheduler's HTTP API and portal."""


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
        url = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession(url) as http:
            yield Small(server, nc, client, http, url)
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
    async def stratus(*argv: str) -> tuple[str, str]:
        run = await run_stratus(small.server.url, *argv)
        assert run.status == 0, run.err
        return run.out, run.err

    out, _ = await stratus("vm", "list", "-o", "json")
    assert [vm["name"] for vm in json.loads(out)] == VMS
    out, _ = await stratus("vm", "list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == VMS
    out, err = await stratus("vm", "list", "-o", "json", "--limit", "5", "--marker", VMS[9])
    assert [vm["name"] for vm in json.loads(out)] == VMS[10:15]
    assert f"--marker {VMS[14]}" in err


async def test_http_lists_every_vm_once_following_next_links(small: Small) -> None:
    seen: list[str] = []
    path = "/v1/vms?limit=7"
    pages = 0
    while True:
        async with small.http.get(path) as response:
            assert response.status == 200
            body = await response.json()
            link = response.headers.get("Link")
        seen += [vm["name"] for vm in body["vms"]]
        pages += 1
        if "next" not in body:
            assert link is None
            break
        assert link is not None and link.endswith('>; rel="next"')
        path = link[1 : link.index(">")]
    assert seen == VMS and pages == 6
    async with small.http.get("/v1/vms") as response:  # no limit: as many as fit
        raw = await response.read()
    assert len(raw) <= MAX_PAYLOAD and "next" in json.loads(raw)
    async with small.http.get("/v1/vms?limit=0") as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_the_portal_shows_every_vm(small: Small, tmp_path: Path) -> None:
    find_chromium()
    async with chromium_page(tmp_path) as page:
        await page.call("Page.navigate", url=f"{small.url}/")

        async def all_shown() -> bool:
            try:
                rows = await page.evaluate(
                    "[...document.querySelectorAll('#vms tr[data-vm]')].map(r => r.dataset.vm)"
                )
            except CdpError:  # the page is still loading
                return False
            return bool(rows == VMS)

        await wait_until(all_shown, timeout_s=20, interval_s=0.1, message="every VM listed")
        assert page.exceptions == []
