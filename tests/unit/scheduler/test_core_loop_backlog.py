"""A backlog of heartbeats (every host at once, after a restart) does not hold the event loop:
the acks of one step go out, and other tasks (the lease renewal, reads) run, before the next."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from nats.aio.client import Client
from nats.aio.msg import Msg

from common import codec, subjects
from common.config import SchedulerConfig
from common.messages import Heartbeat
from common.resources import Resources
from scheduler.core.contract import HeartbeatReceived
from scheduler.core.step import SchedulerCore
from scheduler.shell.app import MAX_BATCH, SchedulerApp
from scheduler.shell.store import SqliteStore
from scheduler.state.cluster import ClusterState


class _Msg:
    """A heartbeat as NATS hands it over; ``respond`` records the ack."""

    def __init__(self, host: str, seq: int, answered: list[str], done: asyncio.Event) -> None:
        self.subject = subjects.host_heartbeat(host)
        self.reply = f"_INBOX.{host}"
        self.headers = None
        self.data = codec.encode(_heartbeat(host, seq))
        self._answered = answered
        self._done = done

    async def respond(self, data: bytes) -> None:
        self._answered.append(codec.heartbeat_ack.decode(data).host_id)
        if len(self._answered) == MAX_BATCH + 10:
            self._done.set()


def _heartbeat(host: str, seq: int) -> Heartbeat:
    return Heartbeat(host_id=host, seq=seq, boot_id=f"boot-{host}", capacity=Resources(8000, 16384))


async def test_acks_of_a_step_go_out_before_the_next_step_of_a_backlog(tmp_path: Path) -> None:
    config = SchedulerConfig(db_path=str(tmp_path / "s.db"))
    app = SchedulerApp(config)
    core = app.core = SchedulerCore(config, ClusterState(), scheduler_id="s", event_seq=0)
    core.start(app.now())
    hosts = [f"h{i}" for i in range(MAX_BATCH + 10)]
    # The hosts are known already: their next heartbeats change no record (steps of acks alone).
    core.step([HeartbeatReceived(_heartbeat(h, 1), 0) for h in hosts], app.now())
    answered: list[str] = []
    all_answered = asyncio.Event()
    for host in hosts:
        await app._on_heartbeat(cast(Msg, _Msg(host, 2, answered, all_answered)))
    seen_by_other_task: list[int] = []

    async def other_task() -> None:
        seen_by_other_task.append(len(answered))

    unused_store = cast(SqliteStore, None)  # a step of acks alone stores nothing
    loop_task = asyncio.create_task(app._run_core(cast(Client, None), unused_store))
    await asyncio.create_task(other_task())
    try:
        assert seen_by_other_task == [MAX_BATCH]  # after the first step's acks, before the next
        async with asyncio.timeout(5):
            await all_answered.wait()
        assert sorted(answered) == sorted(hosts)
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
