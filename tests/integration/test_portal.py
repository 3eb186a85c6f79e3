"""The web portal in headless Chromium, against a real scheduler (with a bearer token), two real
agent processes and a real nats-server: enter the token, see the hosts with their capacity
bars, create a VM from the form, see it become running through the live event stream, drain
its host from the portal and see it run elsewhere; no JavaScript error on the way.

A screenshot goes to the test's directory; set STRATUS_PORTAL_SCREENSHOT=path to keep a copy
(that is how docs/portal.png is made).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from common.config import SchedulerConfig
from common.messages import CreateVm, VmRef
from common.natsserver import NatsServer
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.core.contract import Op
from scheduler.shell.app import SchedulerApp
from tests.integration.browser import CdpError, Page, chromium_page, find_chromium
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TOKEN = "portal-test-token"


async def until_true(page: Page, expression: str, what: str, timeout_s: float = 20) -> None:
    async def check() -> bool:
        try:
            return bool(await page.evaluate(expression))
        except CdpError:  # the page is still loading
            return False

    await wait_until(check, timeout_s=timeout_s, interval_s=0.1, message=what)


def vm_cell(name: str, column: int) -> str:
    return f"document.querySelector('tr[data-vm=\"{name}\"] td:nth-child({column})')?.textContent"


async def fill_and_submit(page: Page, form: str, values: dict[str, str]) -> None:
    await page.evaluate(
        f"(() => {{ const form = document.querySelector({json.dumps(form)});"
        f" for (const [k, v] of Object.entries({json.dumps(values)})) form.elements[k].value = v;"
        " form.requestSubmit(); })()"
    )


async def test_portal_creates_a_vm_sees_it_running_and_drains_its_host(
    nats_server: NatsServer, tmp_path: Path, cluster: Cluster
) -> None:
    find_chromium()
    cluster.start_agent("host-a", capacity="8c/16g", fault_domain="fd-0")
    cluster.start_agent("host-b", capacity="8c/16g", fault_domain="fd-1")
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
        state = app.committed()  # what the portal reads: the last committed step
        assert state is not None
        await wait_until(lambda: len(state.hosts) == 2, timeout_s=15, message="two hosts")
        for name, size in (("db-1", "Large"), ("cache-1", "Medium"), ("batch-1", "Small")):
            await app.submit(Op.CREATE, CreateVm(name=name, size=size))
        await app.submit(Op.STOP, VmRef(name="batch-1"))
        async with chromium_page(tmp_path) as page:
            await run_portal(page, f"http://127.0.0.1:{app.http_port}/", tmp_path)
            assert page.exceptions == []
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


async def run_portal(page: Page, url: str, tmp_path: Path) -> None:
    await page.call("Page.navigate", url=url)
    # Reads need the token here: the portal asks for it, then loads.
    await until_true(page, "!document.querySelector('#notice').hidden", "token requested")
    await fill_and_submit(page, "#token-form", {"token": TOKEN})
    await until_true(
        page, "document.querySelectorAll('#hosts tr[data-host]').length === 2", "hosts listed"
    )
    await until_true(page, "document.querySelector('#live').className.includes('on')", "live")
    bars = await page.evaluate(
        "[...document.querySelectorAll('#hosts .bar .text')].map(e => e.textContent)"
    )
    assert any(text.endswith("/ 8 cores") for text in bars), bars
    assert any(text.endswith("/ 16 GiB") for text in bars), bars

    events_before = int(await page.evaluate("document.querySelector('#live').dataset.events||0"))
    await fill_and_submit(page, "#create-form", {"name": "portal-1", "size": "Medium"})
    await until_true(page, f"{vm_cell('portal-1', 2)} === 'running'", "portal-1 running")
    events_after = int(await page.evaluate("document.querySelector('#live').dataset.events"))
    assert events_after > events_before  # the change arrived over /v1/events
    home = await page.evaluate(vm_cell("portal-1", 4))
    assert home in ("host-a", "host-b")
    other = "host-b" if home == "host-a" else "host-a"

    # Filters: only running VMs, then all again.
    await page.evaluate(
        "(() => { const s = document.querySelector('#filter-state'); s.value = 'running';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    shown = await page.evaluate("[...document.querySelectorAll('#vms tr[data-vm]')].length")
    assert shown == 3  # db-1, cache-1, portal-1; batch-1 is stopped
    await page.evaluate(
        "(() => { const s = document.querySelector('#filter-state'); s.value = '';"
        " s.dispatchEvent(new Event('change')); })()"
    )

    # Drain the VM's host from the portal (it asks first): it moves to the other host.
    await click(page, f'tr[data-host="{home}"] button', "Drain")
    await click(page, f'tr[data-host="{home}"] button', "Really drain?")
    await until_true(
        page,
        f"{vm_cell('portal-1', 4)} === '{other}' && {vm_cell('portal-1', 2)} === 'running'",
        "portal-1 running on the other host",
    )
    await until_true(
        page,
        f"document.querySelector('tr[data-host=\"{home}\"] .badge').textContent === 'cordoned'",
        "drained host cordoned",
    )
    # Allocations follow (the capacity bars are refreshed after the events).
    await until_true(
        page,
        f"document.querySelector('tr[data-host=\"{home}\"] td:nth-child(7)').textContent === '0'"
        f" && document.querySelector('tr[data-host=\"{other}\"] .bar .text').textContent"
        " === '8 / 8 cores'",
        "allocations moved to the other host",
    )
    save_screenshot(await page.screenshot(), tmp_path / "portal.png")


def save_screenshot(png: bytes, path: Path) -> None:
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    path.write_bytes(png)
    keep = os.environ.get("STRATUS_PORTAL_SCREENSHOT")
    if keep:
        shutil.copyfile(path, keep)


async def click(page: Page, selector: str, text: str) -> None:
    await page.evaluate(
        f"[...document.querySelectorAll({json.dumps(selector)})]"
        f".find(b => b.textContent === {json.dumps(text)}).click()"
    )


async def test_portal_detail_pages_images_and_usage(
    nats_server: NatsServer, tmp_path: Path, cluster: Cluster
) -> None:
    """VM detail (disks, events, console link), host detail, an image uploaded, used on create
    and deleted after a confirmation, and the usage chart; screenshots of each page."""
    find_chromium()
    cluster.start_agent("host-a", capacity="8c/16g")
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
        await app.submit(Op.CREATE, CreateVm(name="web-1", size="Small", data_disks_mib=[256]))
        async with chromium_page(tmp_path) as page:
            await drive_pages(page, f"http://127.0.0.1:{app.http_port}/", tmp_path)
            assert page.exceptions == []
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


def shot_path(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"portal-{name}.png"


async def drive_pages(page: Page, url: str, tmp_path: Path) -> None:
    await page.call("Page.navigate", url=url + "#/vm/web-1")
    await until_true(
        page,
        "document.querySelectorAll('#page-vm tr[data-disk]').length === 2",
        "web-1's disks shown",
    )
    link = await page.evaluate(
        "[...document.querySelectorAll('#page-vm a')].find(a => a.textContent === 'Open console')"
        "?.getAttribute('href')"
    )
    assert link == "/console.html?vm=web-1"
    await until_true(
        page,
        "document.querySelectorAll('#timeline li[data-seq]').length >= 2",
        "web-1's events in the timeline",
    )
    save_screenshot(await page.screenshot(), shot_path(tmp_path, "vm"))

    await page.evaluate("location.hash = '#/host/host-a'")
    await until_true(
        page,
        "document.querySelector('#page-host tr[data-vm=\"web-1\"]') !== null",
        "host detail lists web-1",
    )
    age = await page.evaluate("document.querySelector('#heartbeat-age').textContent")
    assert age.endswith("s ago"), age
    save_screenshot(await page.screenshot(), shot_path(tmp_path, "host"))

    await page.evaluate("location.hash = '#/images'")
    await until_true(page, "document.querySelector('tr[data-image=\"tiny\"]') !== null", "images")
    await page.evaluate(
        "(() => { const f = document.querySelector('#upload-form');"
        " const bytes = new Uint8Array(1048576); bytes[510] = 0x55; bytes[511] = 0xaa;"
        " const dt = new DataTransfer(); dt.items.add(new File([bytes], 'disk.img'));"
        " f.elements.file.files = dt.files; f.elements.name.value = 'base';"
        " f.requestSubmit(); })()"
    )
    await until_true(
        page,
        "document.querySelector('tr[data-image=\"base\"] .badge')?.textContent === 'available'",
        "uploaded image listed",
    )
    save_screenshot(await page.screenshot(), shot_path(tmp_path, "images"))
    await click(page, 'tr[data-image="base"] button', "Delete")
    armed = await page.evaluate(
        "document.querySelector('tr[data-image=\"base\"] button').textContent"
    )
    assert armed == "Really delete?"  # nothing deleted on the first click
    await click(page, 'tr[data-image="base"] button', "Really delete?")
    await until_true(
        page, "document.querySelector('tr[data-image=\"base\"]') === null", "image deleted"
    )

    await page.evaluate("location.hash = '#/'")
    await until_true(
        page,
        "[...document.querySelectorAll('#create-form select[name=image] option')]"
        ".some(o => o.value === 'tiny')",
        "image choice on create",
    )
    await click(page, 'tr[data-host="host-a"] button', "Drain")
    label = await page.evaluate(
        "[...document.querySelectorAll('tr[data-host=\"host-a\"] button')][0].textContent"
    )
    assert label == "Really drain?"  # a drain asks first

    await page.evaluate("location.hash = '#/usage'")
    await until_true(
        page,
        "document.querySelectorAll('#cost-chart rect[data-size]').length > 0",
        "cost chart drawn",
    )
    sizes = await page.evaluate(
        "[...document.querySelectorAll('#usage-table tr[data-size]')].map(r => r.dataset.size)"
    )
    assert "Small" in sizes
    save_screenshot(await page.screenshot(), shot_path(tmp_path, "usage"))
    keep = os.environ.get("STRATUS_PORTAL_SCREENSHOTS")
    if keep:
        for name in ("vm", "host", "images", "usage"):
            shutil.copyfile(shot_path(tmp_path, name), Path(keep) / f"portal-{name}.png")
