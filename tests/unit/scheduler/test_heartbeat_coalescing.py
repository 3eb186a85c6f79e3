"""An overloaded scheduler keeps at most one queued heartbeat per host: the newest."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from nats.aio.msg import Msg

from common import codec, subjects
from common.config import SchedulerConfig
from common.messages import Heartbeat
from common.resources import Resources
from scheduler.core.contract import HeartbeatReceived, Input, Tick
from scheduler.shell.app import SchedulerApp


class _Msg:
    def __init__(self, host: str, seq: int) -> None:
        self.subject = subjects.host_heartbeat(host)
        self.reply = "_INBOX.x"
        heartbeat = Heartbeat(host_id=host, seq=seq, boot_id="b", capacity=Resources(1000, 1024))
        self.data = codec.encode(heartbeat)


def _queued(app: SchedulerApp) -> list[Input]:
    return app.queue.take_nowait(app.queue.qsize())


def _seqs(items: list[Input]) -> list[tuple[str, int]]:
    return [
        (item.heartbeat.host_id, item.heartbeat.seq)
        for item in items
        if isinstance(item, HeartbeatReceived)
    ]


async def test_only_each_hosts_newest_queued_heartbeat_reaches_the_core(tmp_path: Path) -> None:
    app = SchedulerApp(SchedulerConfig(db_path=str(tmp_path / "s.db")))
    for host, seq in (("h1", 1), ("h2", 1), ("h1", 2), ("h1", 3)):
        await app._on_heartbeat(cast(Msg, _Msg(host, seq)))
    app.queue.put_nowait(Tick())
    kept = app._latest_heartbeats(_queued(app))
    assert _seqs(kept) == [("h2", 1), ("h1", 3)]
    assert any(isinstance(item, Tick) for item in kept)
    assert len(app._targets) == 2  # the overtaken ones are never answered


async def test_a_heartbeat_arriving_after_the_core_took_the_last_one_is_kept(
    tmp_path: Path,
) -> None:
    app = SchedulerApp(SchedulerConfig(db_path=str(tmp_path / "s.db")))
    await app._on_heartbeat(cast(Msg, _Msg("h1", 1)))
    assert _seqs(app._latest_heartbeats(_queued(app))) == [("h1", 1)]
    await app._on_heartbeat(cast(Msg, _Msg("h1", 2)))
    assert _seqs(app._latest_heartbeats(_queued(app))) == [("h1", 2)]
