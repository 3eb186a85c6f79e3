"""A scheduler that starts while JetStream does not answer (nats-server restarting) waits for it
instead of exiting: found by the chaos campaign (a NATS restart during a scheduler restart)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from cli.client import StratusClient
from common.errors import ApiError
from common.natsserver import start_nats_server
from rigs.cluster import Cluster
from tests.conftest import _require_nats
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def test_scheduler_waits_for_jetstream_instead_of_exiting(tmp_path: Path) -> None:
    _require_nats()
    store = tmp_path / "nats"
    without_js = start_nats_server(store, extra_args=("-js=false",))
    cluster = Cluster(without_js, tmp_path)
    try:
        cluster.start_scheduler()
        log = tmp_path / "scheduler.log"
        await wait_until(
            lambda: log.exists() and "jetstream not ready" in log.read_text(),
            timeout_s=20,
            message="the scheduler retrying its start-up calls",
        )
        assert cluster.scheduler is not None and cluster.scheduler.poll() is None
        without_js.stop()
        cluster.nats = start_nats_server(store, port=without_js.port)
        nc = await nats.connect(cluster.nats.url)
        client = StratusClient(nc, timeout_s=1.0)

        async def answers() -> bool:
            try:
                return await client.list_hosts() == []
            except ApiError:
                return False

        await wait_until(answers, timeout_s=20, message="the scheduler serving")
        await nc.close()
        assert cluster.scheduler.poll() is None
    finally:
        cluster.stop()
        cluster.nats.stop()
