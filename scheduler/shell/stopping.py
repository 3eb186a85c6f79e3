"""Stopping the scheduler's loops and its connection."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client

log = logging.getLogger(__name__)

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


async def close_connection(nc: Client) -> None:
    """Drain, then close whatever the drain left open. ``drain`` raises at once while the
    client reconnects, and a stop that takes too long cancels it: either left the connection
    open, and once NATS was back a deposed term's subscriptions answered API reads from its
    stale view (seen in the chaos campaign). Closing can itself fail when nats-py writes
    pending bytes to a transport a reconnect attempt closed (a RuntimeError from uvloop): the
    client is marked closed, and stops reconnecting, before that write."""
    try:
        await nc.drain()
    except (nats.errors.Error, TimeoutError, OSError, RuntimeError) as exc:
        log.debug("nats drain failed error=%r", exc)
    finally:
        if not nc.is_closed:
            try:
                await nc.close()
            except (nats.errors.Error, OSError, RuntimeError) as exc:
                log.debug("nats close failed error=%r", exc)
