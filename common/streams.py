"""The JetStream streams, buckets and object stores of Stratus: their settings in one place.

Replication is configuration (``replicas`` in the scheduler's config, 1..5): every stream,
KV bucket and object store Stratus creates gets it. Whoever starts first creates them; every
start brings an existing one up to the configured replica count with ``update_stream``, which
keeps its messages. A start never *lowers* a replica count: an operator who raised one by hand
(or a scheduler configured for more) is not undone by a scheduler configured for fewer.
Lowering is a deliberate operator action (``nats stream edit``, or a short nats-py script).
"""

from __future__ import annotations

import dataclasses
import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from common import subjects

log = logging.getLogger(__name__)

JOBS_DUPLICATE_WINDOW_S = 24 * 3600.0
"""A job republished with the same Nats-Msg-Id within this window is stored once."""
MAX_REPLICAS = 5
"""JetStream's own limit on a stream's replicas."""


def jobs_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.JOBS_STREAM,
        subjects=[subjects.JOBS_WILDCARD],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=JOBS_DUPLICATE_WINDOW_S,
        max_msg_size=256 * 1024,
        discard=DiscardPolicy.NEW,
        num_replicas=replicas,
    )


def events_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_WILDCARD],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600.0,
        max_bytes=1024 * 1024 * 1024,
        duplicate_window=120.0,
        num_replicas=replicas,
    )


NAME_IN_USE = 10058
"""JetStream's error code for a stream created meanwhile (with another configuration)."""


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create ``config``'s stream, or update an existing one to it (its messages are kept),
    never lowering the replica count it has; an existing stream that already has every
    setting of ``config`` is left alone."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as exc:
            if exc.err_code != NAME_IN_USE:  # e.g. no peers online for its replicas yet
                raise
            info = await js.stream_info(config.name)  # created by another process meanwhile
    current = info.config.num_replicas or 1
    wanted = config.num_replicas or 1
    if current > wanted:
        log.info(
            "stream keeps its higher replica count stream=%s replicas=%d configured=%d",
            config.name,
            current,
            wanted,
        )
        config.num_replicas = current
    if _differs(info.config, config):
        await js.update_stream(config)


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether any setting ``wanted`` gives differs from the stream's: an update is a JetStream
    meta operation (it waits for a meta leader, e.g. while a NATS node is frozen), so a start
    that changes nothing makes none."""
    for setting in dataclasses.fields(wanted):
        value = getattr(wanted, setting.name)
        if value is not None and getattr(current, setting.name) != value:
            return True
    return False


async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Raise an existing stream's replica count to ``replicas`` (for streams whose other
    settings belong to nats-py, such as an object store's or a KV bucket's)."""
    info = await js.stream_info(stream)
    if (info.config.num_replicas or 1) < replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)
        log.info("stream replicas raised stream=%s replicas=%d", stream, replicas)


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the jobs and events streams, or update them to the current configuration."""
    for config in (jobs_stream_config(replicas), events_stream_config(replicas)):
        await ensure_stream(js, config)
