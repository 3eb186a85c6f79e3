"""The jobs consumer: durable submissions from the jobs stream, handed to the core loop.

Each job is acked only after its effect commits (the core loop answers its token then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from common import subjects

log = logging.getLogger(__name__)

JOB_FETCH = 256
RETRY_S = 0.5
"""How soon a JetStream call is retried when NATS does not answer."""


async def run_jobs(js: JetStreamContext, on_job: Callable[[Msg], None]) -> None:
    """Consume the durable jobs stream, calling ``on_job`` with each message."""
    config = ConsumerConfig(
        durable_name=subjects.JOBS_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_ack_pending=20_000,
    )
    while True:
        try:
            sub = await js.pull_subscribe(
                subjects.JOBS_WILDCARD,
                durable=subjects.JOBS_CONSUMER,
                stream=subjects.JOBS_STREAM,
                config=config,
            )
            break
        except (nats.errors.Error, TimeoutError) as exc:  # NATS restarting
            log.warning("jobs consumer not ready, retrying error=%r", exc)
        await asyncio.sleep(RETRY_S)
    try:
        while True:
            try:
                msgs = await sub.fetch(JOB_FETCH, timeout=1.0)
            except TimeoutError:  # nats' TimeoutError, or asyncio's when the deadline ran out
                continue
            except nats.errors.Error as exc:  # e.g. 503 while nats-server restarts
                log.warning("jobs fetch failed, retrying error=%r", exc)
                await asyncio.sleep(RETRY_S)
                continue
            for msg in msgs:
                on_job(msg)
    finally:
        # nats-py leaves a timed-out fetch's status message unfinished in the inbox queue,
        # and nc.drain() would then wait its whole timeout (30 s) for it: leave first.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
