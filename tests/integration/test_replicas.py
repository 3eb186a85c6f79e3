"""Replication is configuration: streams get the configured replica count, an existing stream is
raised to it without losing messages, and a start never lowers what an operator set higher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NoStreamResponseError

from common import subjects
from common.streams import ensure_stream, ensure_streams, events_stream_config
from rigs.natscluster import NatsCluster
from tests.conftest import _require_nats
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

RETRYABLE = (NatsTimeoutError, NoRespondersError, NoStreamResponseError)
NO_PEERS_YET = 10005
"""JetStream's "no suitable peers for placement": a fresh cluster's peers not all online yet."""


@pytest.fixture
def nats3(tmp_path: Path) -> Iterator[NatsCluster]:
    _require_nats()
    cluster = NatsCluster.create(tmp_path / "nats")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _retrying(call: object) -> None:
    """A fresh cluster's first JetStream calls may find no meta or stream leader yet."""

    async def attempt() -> bool:
        try:
            await call()  # type: ignore[operator]
        except RETRYABLE:
            return False
        except BadRequestError as exc:
            if exc.err_code != NO_PEERS_YET:
                raise
            return False  # a peer the meta leader does not count as online yet
        return True

    await wait_until(attempt, timeout_s=20, message="jetstream to answer")


async def _replicas(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    return info.config.num_replicas or 1


async def test_an_r1_stream_with_messages_is_raised_to_r3_and_keeps_them(
    nats3: NatsCluster,
) -> None:
    await nats3.wait_ready()
    nc = await nats3.connect()
    try:
        js = nc.jetstream(timeout=2.0)
        await _retrying(lambda: ensure_streams(js, 1))
        for i in range(20):
            await _retrying(lambda i=i: js.publish(subjects.vm_event(f"vm-{i}"), b"{}"))
        assert await _replicas(js, subjects.EVENTS_STREAM) == 1

        await _retrying(lambda: ensure_streams(js, 3))

        info = await js.stream_info(subjects.EVENTS_STREAM)
        assert info.config.num_replicas == 3
        assert info.state.messages == 20
        assert await _replicas(js, subjects.JOBS_STREAM) == 3

        async def three_copies() -> bool:
            info = await js.stream_info(subjects.EVENTS_STREAM)
            return info.cluster is not None and len(info.cluster.replicas or []) == 2

        await wait_until(three_copies, timeout_s=20, message="two followers of the stream")
    finally:
        await nc.close()


async def test_a_start_never_lowers_a_replica_count_set_higher(nats3: NatsCluster) -> None:
    await nats3.wait_ready()
    nc = await nats3.connect()
    try:
        js = nc.jetstream(timeout=2.0)
        await _retrying(lambda: ensure_stream(js, events_stream_config(3)))
        await _retrying(lambda: js.publish(subjects.vm_event("web"), b"{}"))

        await ensure_stream(js, events_stream_config(1))  # a scheduler configured for 1

        info = await js.stream_info(subjects.EVENTS_STREAM)
        assert info.config.num_replicas == 3
        assert info.state.messages == 1
    finally:
        await nc.close()


async def test_a_start_that_changes_nothing_updates_no_stream(nc: Client) -> None:
    """Stream updates go through the JetStream meta leader: a scheduler taking over while a
    NATS node is frozen must not wait for one when its streams are already as configured."""
    js = nc.jetstream(timeout=2.0)
    updated: list[str] = []

    async def on_update(msg: Msg) -> None:
        updated.append(msg.subject)

    await nc.subscribe("$JS.EVENT.ADVISORY.STREAM.UPDATED.>", cb=on_update)
    await ensure_streams(js, 1)
    await ensure_streams(js, 1)  # a restart: nothing to change
    config = events_stream_config(1)
    config.max_age = 3600.0
    await ensure_stream(js, config)  # a changed setting is applied
    await nc.flush()
    await wait_until(lambda: len(updated) >= 1, timeout_s=5, message="the update advisory")
    assert updated == [f"$JS.EVENT.ADVISORY.STREAM.UPDATED.{subjects.EVENTS_STREAM}"]
    assert (await js.stream_info(subjects.EVENTS_STREAM)).config.max_age == 3600.0
