from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from common.ids import HostId
from common.messages import HostEvent
from scheduler.core.contract import Emit, Reconnected, Tick
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


HOSTS = ["h1", "h2", "h3"]
Move = tuple[str, float]
"""A host's heartbeat (its name) or a tick (""), after that many seconds."""


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["", *HOSTS]), st.sampled_from([0.0, 0.2, 1.0, 2.5, 6.0])),
        max_size=60,
    )
)
def test_a_tick_finds_every_host_silent_too_long_and_no_other(moves: list[Move]) -> None:
    """However hosts come, go quiet and come back, each tick leaves up exactly the hosts heard
    within ``dead_after_s`` (the check walks the hosts only when one of them may be past it)."""
    kit = CoreKit()  # dead_after_s 6
    heard: dict[str, float] = {}
    for host, after_s in moves:
        kit.t += after_s
        if host:
            kit.heartbeat(host)
            heard[host] = kit.t
            continue
        kit.step(Tick())
        up = {h for h, record in kit.state.hosts.items() if record.up}
        assert up == {h for h, t in heard.items() if kit.t - t <= 6.0}
