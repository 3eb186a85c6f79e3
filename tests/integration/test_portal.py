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
from scheduler.core.contract import Op
from scheduler.shell.app import SchedulerApp
from tests.integration.browser import CdpError, Page, chromium_page, find_chromium
from tests.integration.cluster import FAST_TIMINGS, Cluster
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

    # Drain the VM's host from the portal: it moves to the other host.
    await page.evaluate(
        f"[...document.querySelectorAll('tr[data-host=\"{home}\"] button')]"
        ".find(b => b.textContent === 'Drain').click()"
    )
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
