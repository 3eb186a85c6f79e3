from __future__ import annotations

import pytest

from common.ids import HostId
from common.messages import HostEvent
from scheduler.core.contract import Emit, Reconnected
from scheduler.core.liveness import expired_hosts, fresh_window, renew_windows
from scheduler.state.model import HostRuntime
from tests.unit.scheduler.corekit import CoreKit

A, B, C = HostId("a"), HostId("b"), HostId("c")


@pytest.mark.parametrize(
    ("now_s", "expected"),
    [(10.0, []), (16.0, []), (16.01, [A]), (21.0, [A, B])],
    ids=["fresh", "exactly-dead-after-is-alive", "just-past", "both"],
)
def test_expired_hosts(now_s: float, expected: list[HostId]) -> None:
    runtimes = {A: HostRuntime(last_seen_s=10.0), B: HostRuntime(last_seen_s=14.0)}
    assert expired_hosts(runtimes, [B, A], now_s, dead_after_s=6.0) == expected


def test_down_hosts_are_not_judged_again_and_unknown_ones_are() -> None:
    runtimes = {A: HostRuntime(last_seen_s=0.0), B: HostRuntime(last_seen_s=0.0)}
    assert expired_hosts(runtimes, [A, C], 100.0, dead_after_s=6.0) == [A, C]


def test_fresh_window_presumes_every_host_alive_from_now() -> None:
    window = fresh_window([A, B], 500.0)
    assert expired_hosts(window, [A, B], 505.0, dead_after_s=6.0) == []
    assert expired_hosts(window, [A, B], 507.0, dead_after_s=6.0) == [A, B]


def test_reconnected_renews_every_window_but_keeps_what_a_runtime_knows() -> None:
    runtimes = {A: HostRuntime(last_seen_s=10.0, observed={}), B: HostRuntime(last_seen_s=30.0)}
    renew_windows(runtimes, [A, B, C], 20.0)
    assert {h: r.last_seen_s for h, r in runtimes.items()} == {A: 20.0, B: 30.0, C: 20.0}


def test_a_nats_outage_of_the_scheduler_declares_no_host_dead() -> None:
    """Silent for longer than dead_after_s only because the scheduler's NATS was away: the app
    sends no ticks while disconnected, and Reconnected renews every host's window."""
    kit = CoreKit()
    kit.heartbeat("h1")
    kit.t += 10.0  # the outage (no ticks meanwhile)
    kit.step(Reconnected())
    assert kit.advance(5.0) == []
    assert kit.state.hosts[HostId("h1")].up
    down = [a for a in kit.advance(2.0) if isinstance(a, Emit)]
    assert [a.event.host_id for a in down if isinstance(a.event, HostEvent)] == ["h1"]
