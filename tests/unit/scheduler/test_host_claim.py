"""One agent per host id: a second agent claiming a live host's id is refused in its ack.

A new boot id under a known host id is either the same host's agent restarted (the old boot
has gone silent) or a second agent with the same id (both alive). The core tells them apart by
how long the holder has been silent: longer than ``claim_after_s`` and the newcomer takes the
id over; otherwise its ack says it is refused, nothing of its report is taken in, and the event
stream says so.
"""

from __future__ import annotations

from common.messages import HostEvent, ObservedState, ObservedVm
from scheduler.core.contract import Action, Emit
from scheduler.core.liveness import claim_after_s
from tests.unit.scheduler.corekit import CoreKit, acks, commands


def host_events(actions: list[Action]) -> list[HostEvent]:
    return [a.event for a in actions if isinstance(a, Emit) and isinstance(a.event, HostEvent)]


def refusal(actions: list[Action]) -> str:
    (ack,) = acks(actions)
    return ack.ack.refused


def test_a_second_live_agent_with_the_same_host_id_is_refused() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", boot_id="boot-aaaa1111")
    kit.t += 0.4
    actions = kit.heartbeat("h1", boot_id="boot-bbbb2222")
    reason = refusal(actions)
    assert "host id h1 is held by another agent" in reason
    assert "boot-aaa" in reason and "seen 0.4 s ago" in reason
    assert kit.host("h1").boot_id == "boot-aaaa1111"
    (event,) = host_events(actions)
    assert "boot-bbb" in event.reason and "refused" in event.reason


def test_a_refused_claimant_is_reported_once_and_learns_nothing() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", boot_id="boot-1")
    kit.create("web-1")
    intruder_vms = [
        ObservedVm(name="ghost", generation=1, state=ObservedState.RUNNING, cpu_milli=1, mem_mib=1)
    ]
    first = kit.heartbeat("h1", intruder_vms, boot_id="boot-2")
    again = kit.heartbeat("h1", intruder_vms, boot_id="boot-2")
    assert refusal(first) and refusal(again)
    assert len(host_events(first)) == 1 and host_events(again) == []
    assert commands(first) == [] and commands(again) == []  # its "ghost" is not stopped
    assert kit.state.runtimes[kit.host("h1").host_id].boot_id == "boot-1"


def test_the_holder_keeps_its_id_while_a_claimant_knocks() -> None:
    kit = CoreKit()
    for _ in range(5):
        assert refusal(kit.heartbeat("h1", boot_id="boot-1")) == ""
        kit.t += 0.5
        assert refusal(kit.heartbeat("h1", boot_id="boot-2"))
        kit.t += 0.5


def test_a_restarted_agent_takes_over_once_the_old_boot_is_silent() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", boot_id="boot-1")
    kit.t += 1.0
    assert refusal(kit.heartbeat("h1", boot_id="boot-2"))  # the old boot may still be alive
    kit.t += claim_after_s(kit.config)
    assert refusal(kit.heartbeat("h1", boot_id="boot-2")) == ""
    assert kit.host("h1").boot_id == "boot-2"
    assert refusal(kit.heartbeat("h1", boot_id="boot-1"))  # now the old one is the intruder


def test_the_ack_tells_how_long_a_holder_must_be_silent() -> None:
    kit = CoreKit(heartbeat_interval_s=1.0, dead_after_s=6.0)
    (ack,) = acks(kit.heartbeat("h1"))
    assert ack.ack.claim_after_s == claim_after_s(kit.config)
    assert 1.0 < ack.ack.claim_after_s <= 6.0


def test_after_a_scheduler_restart_the_first_boot_heard_holds_the_id() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", boot_id="boot-1")
    kit.restart(reload=True)
    assert refusal(kit.heartbeat("h1", boot_id="boot-2")) == ""  # boot-1 was not heard since
    assert refusal(kit.heartbeat("h1", boot_id="boot-1"))


def test_a_host_declared_dead_is_free_for_a_new_boot() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", boot_id="boot-1")
    kit.advance(7.0)
    assert not kit.host("h1").up
    assert refusal(kit.heartbeat("h1", boot_id="boot-2")) == ""
    assert kit.host("h1").up
