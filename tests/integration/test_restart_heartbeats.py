"""A restarting scheduler hears heartbeats while its store loads: none sent then is lost."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from nats.aio.client import Client

from common import codec, subjects
from common.config import SchedulerConfig
from common.messages import Heartbeat
from common.natsserver import NatsServer
from common.resources import Resources
from scheduler.shell import readview
from scheduler.shell.app import SchedulerApp
from scheduler.shell.readview import ReadView
from scheduler.shell.store import Loaded
from scheduler.state.cluster import ClusterState
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


async def test_a_heartbeat_sent_while_the_store_loads_is_answered_once_it_is_loaded(
    nats_server: NatsServer, nc: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host is not left waiting a whole interval for its next heartbeat (at 10,000 hosts,
    a restart's last hosts were reconciled an interval after it was ready)."""
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    real = readview.indexed
    indexing, loaded = threading.Event(), threading.Event()

    def held(stored: Loaded) -> tuple[ClusterState, ReadView]:
        indexing.set()
        loaded.wait(timeout=10)  # a big store's indexing, until the heartbeat is queued
        return real(stored)

    monkeypatch.setattr(readview, "indexed", held)
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        await wait_until(indexing.is_set, message="the store is being loaded")
        heartbeat = Heartbeat(host_id="h1", seq=7, boot_id="b1", capacity=Resources(8000, 16384))
        body = codec.encode(heartbeat)
        asked = asyncio.create_task(nc.request(subjects.host_heartbeat("h1"), body, timeout=10))
        await wait_until(lambda: not app.queue.empty(), message="the heartbeat is queued")
        assert not app.ready.is_set()
        loaded.set()
        ack = codec.heartbeat_ack.decode((await asked).data)
        assert (ack.host_id, ack.seq, ack.refused) == ("h1", 7, "")
        assert ack.scheduler_id == app.scheduler_id
        await wait_until(lambda: "h1" in (app.committed() or ClusterState()).hosts)
    finally:
        loaded.set()
        app.stop()
        await asyncio.wait_for(task, timeout=10)
