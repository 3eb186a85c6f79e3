"""The console page in headless Chromium, and the console routes of the HTTP API, against a
real scheduler (with a bearer token for reads too), a real agent on the fake driver and a real
nats-server: the page asks for the token, shows the boot log, sends a typed line and shows the
echo; routes answer 401 without the token, 404 and 409 for VMs without a console.

A screenshot goes to the test's directory; set STRATUS_CONSOLE_SCREENSHOT=path to keep a copy
(that is how docs/portal-console.png is made).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from cli.client import StratusClient
from common.config import SchedulerConfig
from common.messages import CreateVm, VmState
from common.natsserver import NatsServer
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.shell.app import SchedulerApp
from tests.integration.browser import chromium_page, find_chromium
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.test_portal import fill_and_submit, until_true
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TOKEN = "console-test-token"
SCREEN = "document.querySelector('#screen').textContent"


async def check_routes(base: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    typed = {"text": "from http\n"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/vms/web/console/tail") as response:
            assert response.status == 401
        async with http.post(f"{base}/v1/vms/web/console/input", json=typed) as response:
            assert response.status == 401
        async with http.post(
            f"{base}/v1/vms/web/console/input", json=typed, headers=auth
        ) as response:
            assert response.status == 200, await response.text()
            assert (await response.json()) == {"writable": True}
        async with http.get(f"{base}/v1/vms/web/console/tail?max_bytes=30", headers=auth) as r:
            tail = await r.json()
        assert base64.b64decode(tail["output"]["data"]).endswith(b"from http\r\n# ")
        async with http.get(f"{base}/v1/vms/nope/console", headers=auth) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with http.get(f"{base}/v1/vms/idle/console/tail", headers=auth) as response:
            assert response.status == 409
            body = await response.json()
        assert body["error"]["detail"].startswith("vm idle is not running on any host")


async def test_console_page_shows_the_boot_log_and_echoes_a_typed_line(
    nats_server: NatsServer, tmp_path: Path, cluster: Cluster, client: StratusClient
) -> None:
    find_chromium()
    cluster.start_agent("host-a", capacity="8c/16g")
    config = SchedulerConfig(
        nats_url=nats_server.url,
        db_path=str(tmp_path / "s.db"),
        http_listen="127.0.0.1:0",
        api_token=TOKEN,
        api_token_for_reads=True,
        **FAST_TIMINGS,
    )
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        await wait_hosts_up(client, 1)
        await client.create_vm(CreateVm(name="web", size="Small"))
        await client.create_vm(CreateVm(name="idle", size="Small"))
        await wait_all_running(client, ["web", "idle"])
        await client.stop_vm("idle")

        async def idle_stopped() -> bool:
            return (await client.get_vm("idle")).state is VmState.STOPPED

        await wait_until(idle_stopped, timeout_s=10, message="idle stopped")
        base = f"http://127.0.0.1:{app.http_port}"
        await check_routes(base)
        async with chromium_page(tmp_path, height=700) as page:
            await page.call("Page.navigate", url=f"{base}/console.html?vm=web")
            await until_true(page, "!document.querySelector('#notice').hidden", "token asked")
            await fill_and_submit(page, "#token-form", {"token": TOKEN})
            await until_true(page, f"{SCREEN}.includes('STRATUS-READY vm=web')", "boot log")
            assert await page.evaluate("document.querySelector('#live').textContent") == "live"
            where = await page.evaluate("document.querySelector('#where').textContent")
            assert where == "web on host host-a"
            await fill_and_submit(page, "#input-form", {"line": "uname -a"})
            await until_true(page, f"{SCREEN}.includes('uname -a\\nuname -a\\n# ')", "echo")
            assert await page.evaluate(f"{SCREEN}.split('from http').length") == 3  # once each
            save_screenshot(await page.screenshot(), tmp_path / "portal-console.png")
            await client.stop_vm("web")
            await until_true(
                page, "document.querySelector('#live').textContent === 'closed'", "closed"
            )
            assert page.exceptions == []
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


def save_screenshot(png: bytes, path: Path) -> None:
    assert png.startswith(b"\x89PNG") and len(png) > 5_000
    path.write_bytes(png)
    keep = os.environ.get("STRATUS_CONSOLE_SCREENSHOT")
    if keep:
        shutil.copyfile(path, keep)
