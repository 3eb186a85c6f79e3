"""Host liveness: who has been silent for too long. Pure functions of values and ``now``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from common.config import SchedulerConfig
from common.ids import HostId
from scheduler.state.model import HostRuntime


def expired_hosts(
    runtimes: Mapping[HostId, HostRuntime],
    up_hosts: Iterable[HostId],
    now_s: float,
    dead_after_s: float,
) -> list[HostId]:
    """Hosts that are up but have not been heard from for more than ``dead_after_s``.

    Sorted, so that the order in which hosts are declared dead is deterministic.
    """
    return sorted(
        host
        for host in up_hosts
        if (runtime := runtimes.get(host)) is None or now_s - runtime.last_seen_s > dead_after_s
    )


CLAIM_MARGIN_S = 0.5
"""Added to two heartbeat intervals: how late a live agent's heartbeat may be (jitter, a
loaded scheduler) before its host id may go to another boot."""


def claim_after_s(config: SchedulerConfig) -> float:
    """How long the agent holding a host id must be silent before another boot may take the id
    over: a restart of the same agent (the old boot silent) is accepted then, a second agent
    beside a live one never is. Never longer than ``dead_after_s``: a host declared dead holds
    nothing."""
    return min(2 * config.heartbeat_interval_s + CLAIM_MARGIN_S, config.dead_after_s)


def fresh_window(hosts: Iterable[HostId], now_s: float) -> dict[HostId, HostRuntime]:
    """Runtimes for a scheduler that just started: every known host is presumed alive as of
    ``now_s``, so a control-plane restart never declares healthy hosts dead."""
    return {host: HostRuntime(last_seen_s=now_s) for host in hosts}


def renew_windows(
    runtimes: dict[HostId, HostRuntime], hosts: Iterable[HostId], now_s: float
) -> None:
    """After the scheduler's own NATS outage: nobody could be heard during it, so every known
    host is presumed alive as of ``now_s`` (what else a runtime holds is kept)."""
    for host in hosts:
        runtime = runtimes.get(host)
        if runtime is None:
            runtimes[host] = HostRuntime(last_seen_s=now_s)
        else:
            runtime.last_seen_s = max(runtime.last_seen_s, now_s)
