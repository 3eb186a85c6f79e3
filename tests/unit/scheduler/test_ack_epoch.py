"""A heartbeat ack carries the epoch of the leadership that granted it, from the core itself: the
shell sends the core's ack as it is (it used to copy every ack to stamp the epoch)."""

from __future__ import annotations

from datetime import UTC, datetime

from common.config import SchedulerConfig
from common.messages import Heartbeat
from common.resources import Resources
from scheduler.core.contract import Ack, HeartbeatReceived, Now
from scheduler.core.step import SchedulerCore
from scheduler.state.cluster import ClusterState


def _acks(core: SchedulerCore, seq: int, now_s: float) -> list[Ack]:
    heartbeat = Heartbeat(host_id="h1", seq=seq, boot_id="b1", capacity=Resources(8000, 16384))
    now = Now(now_s, datetime(2026, 1, 1, tzinfo=UTC))
    result = core.step([HeartbeatReceived(heartbeat, seq)], now)
    return [action for action in result.actions if isinstance(action, Ack)]


def test_every_ack_of_a_term_carries_its_epoch() -> None:
    config = SchedulerConfig(db_path=":memory:")
    core = SchedulerCore(config, ClusterState(), scheduler_id="s1", event_seq=0, epoch=7)
    core.start(Now(0.0, datetime(2026, 1, 1, tzinfo=UTC)))
    for seq in range(1, 5):  # the first report (learnt in full), then unchanged ones
        (ack,) = _acks(core, seq, float(seq))
        assert (ack.ack.seq, ack.ack.epoch, ack.ack.scheduler_id) == (seq, 7, "s1")


def test_a_scheduler_without_a_lease_acks_with_epoch_zero() -> None:
    core = SchedulerCore(
        SchedulerConfig(db_path=":memory:"), ClusterState(), scheduler_id="s1", event_seq=0
    )
    core.start(Now(0.0, datetime(2026, 1, 1, tzinfo=UTC)))
    (ack,) = _acks(core, 1, 1.0)
    assert ack.ack.epoch == 0
