"""Stopping the scheduler's loops and its connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

RECANCEL_S = 0.5
RELEASE_S = 1.0


async def cancel_until_done(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` until each has ended. On Python 3.11 a cancellation that lands just as
    an ``asyncio.wait_for`` inside nats-py completes can be swallowed (fixed in 3.12): the jobs
    or publisher loop then carries on, and the scheduler never stops. Cancelling again ends it."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)


async def release_jobs(jobs: list[Msg]) -> None:
    """Hand the jobs a term took but did not ack back to the stream (nak), so that the next
    term gets them at once rather than after the consumer's ack wait (30 s): a lone scheduler
    that stepped down after a stall otherwise sat idle with work waiting. Redelivery is
    harmless (a job's message id is its request id). At most ``RELEASE_S``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RELEASE_S):
            for msg in jobs:
                try:
                    await msg.nak()
                except nats.errors.Error as exc:
                    log.debug("jobs not released error=%r", exc)
                    return


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


async def run_loops(
    stop: asyncio.Event, core: Coroutine[Any, Any, None], others: list[Coroutine[Any, Any, None]]
) -> None:
    """Run the core loop and the others until ``stop`` is set or one of them ends (a failure:
    they loop forever). Then the core loop is cancelled once (a step being committed still
    acts, for up to ``CORE_FINISH_S``) and the others until they end; the failures are raised
    as an ``ExceptionGroup``. The ending goes on if this is cancelled meanwhile.

    Not a ``TaskGroup``: when a loop fails (a deposed term's core loop), a TaskGroup cancels the
    others once and waits for them, and on Python 3.11 a cancellation swallowed by nats-py's
    ``wait_for`` left the jobs loop fetching forever: the deposed scheduler never stepped down,
    never led again, ignored SIGTERM, and queued every heartbeat and job it still received."""
    core_task = asyncio.ensure_future(core)
    tasks = [asyncio.ensure_future(loop) for loop in others]
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([stopping, core_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        ending = asyncio.ensure_future(_end(core_task, [stopping, *tasks]))
        _ENDING.add(ending)
        ending.add_done_callback(_ENDING.discard)
        await asyncio.shield(ending)
    failures = [
        task.exception()
        for task in (core_task, *tasks)
        if not task.cancelled() and task.exception() is not None
    ]
    if failures:
        raise ExceptionGroup("scheduler loops failed", failures)  # type: ignore[type-var]


CORE_FINISH_S = 3.0
_ENDING: set[asyncio.Future[None]] = set()
"""Endings that outlive a cancelled ``run_loops`` (the event loop holds tasks weakly)."""


async def _end(core: asyncio.Future[None], others: Sequence[asyncio.Future[Any]]) -> None:
    core.cancel()
    await cancel_until_done(others)
    await asyncio.wait([core], timeout=CORE_FINISH_S)
    await cancel_until_done([core])
