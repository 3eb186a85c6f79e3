"""The state log's catch-up bounds itself: a standby applying a long log stops when told to,
record by record, without relying on a cancellation reaching it (real nats-server and SQLite)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from common.natsserver import NatsServer
from scheduler.shell.statelog import StateLog, ensure_state_log
from scheduler.shell.store import Rows, SqliteStore

pytestmark = pytest.mark.integration

BATCHES = 30


def _batch(index: int) -> Rows:
    return Rows([], [(f"h{index:03d}", b"{}")], [], [], [], [])


async def test_a_catch_up_told_to_stop_stops_between_records_and_resumes_later(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream(timeout=2.0)
    await ensure_state_log(js, 1)
    leader_store = await SqliteStore.open(tmp_path / "leader.db")
    leader = StateLog(js, leader_store, 0, replicas=1)
    standby = StateLog(js, await SqliteStore.open(tmp_path / "standby.db"), 0, replicas=1)
    try:
        await leader.take_snapshot(str(tmp_path / "leader.db"))
        await leader.fence(1)
        for index in range(BATCHES):
            await leader_store.write(await leader.append(_batch(index)))

        asked = 0

        def five_more() -> bool:
            nonlocal asked
            asked += 1
            return asked <= 5

        with pytest.raises(TimeoutError):
            await standby.catch_up(five_more)
        assert 0 < standby.seq <= 1 + 5 < leader.seq
        # Nothing half-applied: what it applied is in its store; the rest comes next time.
        assert await standby.catch_up() > 0
        assert standby.seq == leader.seq
        assert int(await standby.store.meta("state_log_seq") or 0) == leader.seq
    finally:
        await nc.close()
        await leader.store.close()
        await standby.store.close()  # its store, replaced by the snapshot it started from
