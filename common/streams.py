"""The JetStream streams of Stratus, created idempotently by whoever starts first."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from common import subjects

JOBS_DUPLICATE_WINDOW_S = 24 * 3600.0
"""A job republished with the same Nats-Msg-Id within this window is stored once."""


def jobs_stream_config() -> StreamConfig:
    return StreamConfig(
        name=subjects.JOBS_STREAM,
        subjects=[subjects.JOBS_WILDCARD],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=JOBS_DUPLICATE_WINDOW_S,
        max_msg_size=256 * 1024,
        discard=DiscardPolicy.NEW,
    )


def events_stream_config() -> StreamConfig:
    return StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_WILDCARD],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600.0,
        max_bytes=1024 * 1024 * 1024,
        duplicate_window=120.0,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the jobs and events streams, or update them to the current configuration."""
    for config in (jobs_stream_config(), events_stream_config()):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
