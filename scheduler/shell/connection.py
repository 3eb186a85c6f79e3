"""The scheduler's NATS connection: reconnecting for ever, and telling the core when it is back
(every host then gets a fresh window: a NATS outage is not a host's death)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import nats
from nats.aio.client import Client

from common.config import SchedulerConfig
from common.natsauth import auth_options, inbox_options, nats_servers

log = logging.getLogger(__name__)


async def connect(
    config: SchedulerConfig, scheduler_id: str, on_reconnected: Callable[[], None]
) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats error error=%s", exc)

    async def on_disconnected() -> None:
        log.warning("nats disconnected: hosts are not judged until it is back")

    async def reconnected() -> None:
        log.info("nats reconnected: every host gets a fresh window")
        on_reconnected()

    return await nats.connect(
        nats_servers(config.nats_url),  # a cluster: several URLs
        name=f"stratus-scheduler-{scheduler_id}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        allow_reconnect=True,
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=reconnected,
        **auth_options(config.nats_creds, config.nats_nkey_seed, config.nats_tls_ca),
        **inbox_options(config.nats_nkey_seed),
    )
