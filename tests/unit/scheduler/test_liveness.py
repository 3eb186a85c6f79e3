from __future__ import annotations

import pytest

from common.ids import HostId
from scheduler.liveness import expired_hosts, fresh_window
from scheduler.state.model import HostRuntime

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
