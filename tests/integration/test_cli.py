"""The ``stratus`` command as users run it (a process, stdout/stderr not a terminal) against a
real nats-server, the scheduler and a host agent on the fake driver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cli.client import StratusClient
from rigs.cluster import Cluster
from tests.integration.helpers import Run, run_stratus, wait_hosts_up

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


Stratus = Callable[..., Awaitable[Run]]


@pytest.fixture
async def stratus(cluster: Cluster, client: StratusClient) -> AsyncIterator[Stratus]:
    cluster.start_scheduler()
    cluster.start_agent("h1", capacity="4c/8g")
    await wait_hosts_up(client, 1)

    async def run(*argv: str) -> Run:
        return await run_stratus(cluster.nats.url, *argv)

    yield run


async def test_a_repeated_create_says_the_vm_already_exists(stratus: Stratus) -> None:
    first = await stratus("vm", "create", "web-1", "--size", "small")
    assert first.status == 0, first.err
    assert "already exists" not in first.err
    again = await stratus("vm", "create", "web-1", "--size", "Small")
    assert again.status == 0, again.err
    assert again.err.strip() == "web-1 already exists (same spec)"
    clash = await stratus("vm", "create", "web-1", "--size", "Medium")
    assert clash.status == 1
    assert clash.err.startswith("error: conflict:")


async def test_wait_follows_every_vm_verb_to_its_outcome(stratus: Stratus) -> None:
    created = await stratus("vm", "create", "web-1", "--size", "Small", "--wait")
    assert created.status == 0, created.err
    assert created.err.strip() == "web-1 is running on h1"  # no progress: not a terminal
    assert "running" in created.out
    stopped = await stratus("vm", "stop", "web-1", "--wait")
    assert stopped.status == 0, stopped.err
    assert stopped.err.strip() == "web-1 is stopped"
    attached = await stratus("disk", "attach", "web-1", "--size", "1G", "--wait")
    assert attached.status == 0, attached.err
    assert attached.err.strip().startswith("web-1 has data disk web-1-")
    started = await stratus("vm", "start", "web-1", "--wait", "-o", "json")
    assert started.status == 0, started.err
    assert '"state": "running"' in started.out
    deleted = await stratus("vm", "delete", "web-1", "--wait")
    assert deleted.status == 0, deleted.err
    assert deleted.err.strip() == "web-1 is deleted"


async def test_a_capture_that_fails_later_fails_the_waiting_command(stratus: Stratus) -> None:
    assert (await stratus("vm", "create", "web-1", "--size", "Small", "--wait")).status == 0
    # The fake driver keeps no disks: the capture is accepted, then fails on the host.
    captured = await stratus("vm", "capture", "web-1", "--image", "snap", "--wait")
    assert captured.status == 1
    assert captured.err.startswith("error: failed: image snap: capture failed:")
    assert "keeps no disks" in captured.err
    assert (await stratus("vm", "start", "web-1", "--wait")).status == 0
    started = await stratus("vm", "capture", "web-1", "--image", "snap2")
    assert started.status == 0  # without --wait: accepted, and it says what happens next
    assert "capturing" in started.err and "--wait" not in started.err


async def test_wait_ends_non_zero_with_the_reason_when_it_times_out(stratus: Stratus) -> None:
    assert (await stratus("vm", "create", "web-1", "--size", "Small", "--wait")).status == 0
    run = await stratus("vm", "create", "big-1", "--size", "Large", "--wait", "--timeout", "1")
    assert run.status == 1
    assert run.err.startswith("error: timeout: vm 'big-1' is still pending")
    assert "no host fits" in run.err


async def test_disk_list_shows_the_disks_of_one_vm_or_all(stratus: Stratus) -> None:
    assert (
        await stratus("vm", "create", "web-1", "--size", "Small", "--data-disk", "1G")
    ).status == 0
    assert (await stratus("vm", "create", "db-1", "--size", "Small")).status == 0
    one = await stratus("disk", "list", "web-1")
    assert one.status == 0, one.err
    lines = one.out.splitlines()
    assert lines[0].split() == ["VM", "DISK", "KIND", "SIZE", "IMAGE", "STORAGE", "HOST"]
    rows = [line.split() for line in lines[1:]]
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("web-1", "os", "image"),
        ("web-1", "data", "1G"),
    ]
    every = json.loads((await stratus("disk", "list", "-o", "json")).out)
    assert sorted((d["vm"], d["kind"]) for d in every) == [
        ("db-1", "os"),
        ("web-1", "data"),
        ("web-1", "os"),
    ]
    missing = await stratus("disk", "list", "nope")
    assert missing.status == 1 and missing.err.startswith("error: not_found:")
