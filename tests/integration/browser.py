"""Headless Chromium driven over the Chrome DevTools Protocol (a websocket, with aiohttp): enough
to load a page, run JavaScript in it and take screenshots. No Selenium, no chromedriver."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
INSTALL_HINT = "apt-get install -y --no-install-recommends chromium fonts-dejavu-core"


def find_chromium() -> str:
    """The browser binary; skip the test without one (fail in CI: STRATUS_REQUIRE_CHROMIUM=1)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("STRATUS_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"chromium is required here: {INSTALL_HINT}")
    pytest.skip(f"chromium not found: {INSTALL_HINT}")


class CdpError(Exception):
    pass


class Page:
    """One page target: ``call`` a CDP method, ``evaluate`` JavaScript, ``screenshot``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.exceptions: list[str] = []
        """Uncaught JavaScript exceptions seen so far (Runtime.exceptionThrown)."""

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(30):
            while True:
                message: dict[str, Any] = await self._ws.receive_json()
                if message.get("method") == "Runtime.exceptionThrown":
                    details = message["params"]["exceptionDetails"]
                    self.exceptions.append(str(details.get("exception", details)))
                if message.get("id") == call_id:
                    if "error" in message:
                        raise CdpError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        """The whole page as a PNG."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


@asynccontextmanager
async def chromium_page(
    workdir: Path, *, width: int = 1280, height: int = 900
) -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own profile under ``workdir``) and its first page."""
    profile = workdir / "chromium-profile"
    process, log = _launch(find_chromium(), profile, workdir / "chromium.log", width, height)
    try:
        port = await _devtools_port(profile, process)
        async with aiohttp.ClientSession() as session:
            ws_url = await _page_websocket(session, port)
            async with session.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                await page.call("Runtime.enable")
                await page.call("Page.enable")
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _launch(
    binary: str, profile: Path, log_path: Path, width: int, height: int
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    profile.mkdir(parents=True)
    log = log_path.open("wb")
    args = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ]
    process = subprocess.Popen(
        [*args, "about:blank"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    return process, log


async def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    """Chromium writes the port it picked to DevToolsActivePort in its profile."""
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(30):
        while True:
            if process.poll() is not None:
                raise CdpError(f"chromium exited with {process.returncode}")
            lines = marker.read_text().splitlines() if marker.exists() else []
            if lines and lines[0].isdigit():
                return int(lines[0])
            await asyncio.sleep(0.05)


async def _page_websocket(session: aiohttp.ClientSession, port: int) -> str:
    async with asyncio.timeout(30):
        while True:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.05)
