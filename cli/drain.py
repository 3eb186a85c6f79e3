"""``stratus host drain HOST --wait``: follow a drain to its end with a text progress bar."""

from __future__ import annotations

import asyncio
from typing import Protocol

from cli.waiting import Progress
from common import messages as m
from common.errors import ApiError
from common.waiting import Deadline

POLL_S = 0.2
BAR_WIDTH = 30


class HostLister(Protocol):
    async def list_hosts(self) -> list[m.HostInfo]: ...


def progress_bar(
    host_id: str, moved: int, total: int, width: int = BAR_WIDTH, live: int = 0
) -> str:
    """``draining h1 [###########-------------------] 3/8 vms moved, 2 migrating live``."""
    filled = width if total <= 0 else min(width, width * moved // total)
    bar = f"draining {host_id} [{'#' * filled}{'-' * (width - filled)}] {moved}/{total} vms moved"
    return bar + (f", {live} migrating live" if live else "")


async def wait_drained(
    client: HostLister, started: m.HostInfo, timeout_s: float, progress: Progress
) -> m.HostInfo:
    """Poll the host list until ``started``'s drain ends, redrawing a bar on a terminal;
    ``ApiError`` on timeout or if the host disappears."""
    host_id, total = started.host_id, started.drain_remaining
    deadline = Deadline.after(timeout_s)
    host = started
    try:
        while True:
            moved = total - host.drain_remaining if host.draining else total
            live = host.migrations if host.draining else 0
            progress.show(progress_bar(host_id, moved, total, live=live))
            if not host.draining:
                return host
            if deadline.passed():
                detail = f"host {host_id} still draining after {timeout_s:g}s: "
                raise ApiError("timeout", detail + f"{host.drain_remaining} vms left")
            await asyncio.sleep(POLL_S)
            found = [h for h in await client.list_hosts() if h.host_id == host_id]
            if not found:
                raise ApiError(m.ErrorCode.NOT_FOUND, f"host {host_id} is no longer listed")
            host = found[0]
    finally:
        progress.clear()
