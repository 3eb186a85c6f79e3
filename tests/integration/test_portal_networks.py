"""Networks in the portal (headless Chromium, a real scheduler, agent and nats-server): create a
network on the networks page, create a VM in it from the overview's form and see its address in
the VM list, forward a port from the VM's page and see where it answers; a refused range is
said, not shown as a network."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.config import SchedulerConfig
from common.natsserver import NatsServer
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.shell.app import SchedulerApp
from tests.integration.browser import Page, chromium_page, find_chromium
from tests.integration.test_portal import click, fill_and_submit, save_screenshot, until_true
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


async def test_portal_networks_page_vm_address_and_endpoint(
    nats_server: NatsServer, tmp_path: Path, cluster: Cluster
) -> None:
    find_chromium()
    cluster.start_agent("host-a", capacity="8c/16g", extra=("--underlay-ip", "127.0.0.1"))
    config = SchedulerConfig(
        nats_url=nats_server.url,
        db_path=str(tmp_path / "s.db"),
        http_listen="127.0.0.1:0",
        **FAST_TIMINGS,
    )
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        state = app.committed()
        assert state is not None
        await wait_until(lambda: len(state.hosts) == 1, timeout_s=15, message="one host")
        async with chromium_page(tmp_path) as page:
            await drive(page, f"http://127.0.0.1:{app.http_port}/", tmp_path)
            assert page.exceptions == []
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


async def drive(page: Page, url: str, tmp_path: Path) -> None:
    await page.call("Page.navigate", url=url + "#/networks")
    await until_true(page, "document.querySelector('#vnet-form') !== null", "networks page")
    await fill_and_submit(page, "#vnet-form", {"name": "front", "cidr": "10.1.0.5/24"})
    await until_true(
        page,
        "document.querySelector('#vnet-result').textContent.includes('invalid_network')",
        "a bad range is refused in words",
    )
    await fill_and_submit(page, "#vnet-form", {"name": "front", "cidr": "10.1.0.0/24"})
    await until_true(
        page, "document.querySelector('tr[data-vnet=\"front\"]') !== null", "network listed"
    )
    save_screenshot(await page.screenshot(), tmp_path / "portal-networks.png")

    await page.evaluate("location.hash = '#/'")
    await until_true(
        page,
        "[...document.querySelectorAll('#create-form select[name=vnet] option')]"
        ".some(o => o.value === 'front')",
        "network choice on create",
    )
    await fill_and_submit(page, "#create-form", {"name": "web-1", "size": "Small", "vnet": "front"})
    await until_true(
        page,
        "document.querySelector('tr[data-vm=\"web-1\"] td.network')?.textContent"
        " === 'front 10.1.0.2'",
        "web-1's address in the VM list",
    )

    await page.evaluate("location.hash = '#/vm/web-1'")
    await until_true(
        page, "document.querySelector('#page-vm tr[data-nic=\"front\"]') !== null", "NIC shown"
    )
    await fill_and_submit(page, "#endpoint-form", {"vm_port": "22", "public_port": "8022"})
    await until_true(
        page,
        "document.querySelector('#page-vm tr[data-endpoint=\"22/tcp\"] td.where')?.textContent"
        " === '127.0.0.1:8022'",
        "the endpoint answers on the host's address",
    )
    await click(page, '#page-vm tr[data-endpoint="22/tcp"] button', "Remove")
    await click(page, '#page-vm tr[data-endpoint="22/tcp"] button', "Really remove?")
    await until_true(
        page, "document.querySelector('#page-vm tr[data-endpoint]') === null", "removed"
    )

    await page.evaluate("location.hash = '#/networks'")
    await until_true(
        page,
        "document.querySelector('tr[data-vnet=\"front\"] td.vms')?.textContent === '1'",
        "the network counts its VM",
    )
    used = await page.evaluate(
        "document.querySelector('tr[data-vnet=\"front\"] .bar .text').textContent"
    )
    assert used == "1 / 253 addresses"
