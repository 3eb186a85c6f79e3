from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from cli.client import StratusClient
from common.natsserver import NatsServer
from rigs.cluster import Cluster
from rigs.netqemu import NetRig
from tests.netkit import clean_leftovers, require_netns
from tests.qemukit import boot_kit


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


@pytest.fixture(scope="module")
def net_kit() -> Path:
    return boot_kit()


@pytest.fixture
def net_rig(net_kit: Path, tmp_path: Path) -> Iterator[NetRig]:
    """nats-server, the scheduler and two qemu hosts ``h1`` and ``h2``, each in a network
    namespace of its own joined by a veth underlay (agents: ``start_agent``)."""
    require_netns()
    clean_leftovers()
    made = NetRig(tmp_path, net_kit)
    try:
        made.start(["h1", "h2"])
        yield made
    finally:
        made.stop()


@pytest.fixture
async def net_api(net_rig: NetRig) -> AsyncIterator[StratusClient]:
    nc = await nats.connect(net_rig.url, connect_timeout=5)
    try:
        yield StratusClient(nc, timeout_s=10.0)
    finally:
        await nc.close()
