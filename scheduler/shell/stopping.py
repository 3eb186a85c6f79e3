"""Stopping the scheduler's loops."""

from __future__ import annotations

import asyncio

RECANCEL_S = 0.5


async def cancel_until_done(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` until each has ended. On Python 3.11 a cancellation that lands just as
    an ``asyncio.wait_for`` inside nats-py completes can be swallowed (fixed in 3.12): the jobs
    or publisher loop then carries on, and the scheduler never stops. Cancelling again ends it."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
