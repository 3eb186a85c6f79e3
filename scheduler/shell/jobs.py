"""The jobs consumer: durable submissions from the jobs stream, handed to the core loop.

Each job is acked only after its effect commits (the core loop answers its token then).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from common import subjects
from scheduler.shell.retry import retry_while_nats_down

log = logging.getLogger(__name__)

JOB_FETCH = 256


async def run_jobs(
    js: JetStreamContext, on_job: Callable[[Msg], None], room: Callable[[], Awaitable[None]]
) -> None:
    """Consume the durable jobs stream, calling ``on_job`` with each message; each fetch waits
    for ``room`` first (the core loop's request lane short enough)."""
    config = ConsumerConfig(
        durable_name=subjects.JOBS_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_ack_pending=20_000,
    )

    @retry_while_nats_down("jobs consumer not ready")
    async def subscribe() -> JetStreamContext.PullSubscription:
        return await js.pull_subscribe(
            subjects.JOBS_WILDCARD,
            durable=subjects.JOBS_CONSUMER,
            stream=subjects.JOBS_STREAM,
            config=config,
        )

    sub = await subscribe()

    @retry_while_nats_down("jobs fetch failed")  # e.g. 503 while nats-server restarts
    async def fetch() -> list[Msg]:
        try:
            return await sub.fetch(JOB_FETCH, timeout=1.0)
        except TimeoutError:  # no job this second (nats' TimeoutError, or asyncio's)
            return []

    try:
        while True:
            await room()
            for msg in await fetch():
                on_job(msg)
    finally:
        # nats-py leaves a timed-out fetch's status message unfinished in the inbox queue,
        # and nc.drain() would then wait its whole timeout (30 s) for it: leave first.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
