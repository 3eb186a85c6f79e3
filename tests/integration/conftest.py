from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from cli.client import StratusClient
from common.natsserver import NatsServer
from rigs.cluster import Cluster


@pytest.fixture
def cluster(nats_server: NatsServer, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(nats_server, tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def client(nc: Client) -> AsyncIterator[StratusClient]:
    yield StratusClient(nc, timeout_s=5.0)
