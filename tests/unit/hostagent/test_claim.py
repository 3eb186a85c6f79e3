"""One agent per host id, on the agent's side: nothing runs before an ack accepts this boot,
and an agent refused for longer than the holder would need to fall silent exits."""

from __future__ import annotations

from msgspec.structs import replace

from common.messages import DeleteVm, HeartbeatAck, StartVm, StopVm
from hostagent.claim import ClaimStatus
from hostagent.stimuli import (
    AckReceived,
    ClaimRefused,
    DriverCall,
    DriverForget,
    Instruction,
    LeaseRenewed,
    RecordExecution,
)
from tests.unit.hostagent.conftest import ack_for, make_spec, make_state
from tests.unit.hostagent.syncagent import SyncAgent

REASON = "host id h1 is held by another agent (boot aaaa1111…, seen 0.4 s ago)"


def executed(instructions: list[Instruction]) -> list[Instruction]:
    return [i for i in instructions if isinstance(i, DriverCall | RecordExecution)]


def answer(agent: SyncAgent, now_s: float, *, refused: str = "") -> list[Instruction]:
    """Send a heartbeat at ``now_s`` and feed its ack (refused or not) 0.1 s later."""
    heartbeat = agent.heartbeat(now_s)
    ack: HeartbeatAck = replace(ack_for(heartbeat), claim_after_s=2.5, refused=refused)
    return agent.handle(AckReceived(ack), now_s + 0.1)


def test_commands_before_the_first_ack_wait_for_it() -> None:
    agent = SyncAgent(make_state())
    agent.execute([DeleteVm(name="vm-1", generation=1)], 100.0)
    assert executed(agent.log) == []
    answer(agent, 100.0)
    assert agent.state.claim.status is ClaimStatus.HELD
    assert executed(agent.log) == [DriverForget("vm-1", 1)]


def test_a_refused_agent_executes_nothing_and_gets_no_lease() -> None:
    agent = SyncAgent(make_state())
    agent.execute([StopVm(name="vm-1", generation=1)], 100.0)
    out = answer(agent, 100.0, refused=REASON)
    assert not [i for i in out if isinstance(i, LeaseRenewed)]
    assert agent.state.lease.expired(100.2)
    agent.execute([DeleteVm(name="vm-2", generation=1)], 100.3)
    assert executed(agent.log) == []


def test_an_agent_refused_past_the_grace_is_told_to_exit_and_drops_its_commands() -> None:
    agent = SyncAgent(make_state())
    agent.execute([DeleteVm(name="vm-1", generation=1)], 100.0)
    assert ClaimRefused(REASON) not in answer(agent, 100.0, refused=REASON)
    assert ClaimRefused(REASON) not in answer(agent, 102.0, refused=REASON)  # within 2.5 + 1 s
    assert answer(agent, 104.0, refused=REASON) == [ClaimRefused(REASON)]
    assert agent.state.claim.status is ClaimStatus.REFUSED
    answer(agent, 105.0)  # a late acceptance changes nothing: the agent is on its way out
    agent.execute([DeleteVm(name="vm-2", generation=1)], 105.5)
    assert executed(agent.log) == []


def test_a_restarted_agent_refused_at_first_is_accepted_once_its_old_boot_is_silent() -> None:
    agent = SyncAgent(make_state())
    answer(agent, 100.0, refused=REASON)
    agent.execute([DeleteVm(name="vm-1", generation=1)], 100.5)
    answer(agent, 102.0)
    assert agent.state.claim.status is ClaimStatus.HELD
    assert executed(agent.log) == [DriverForget("vm-1", 1)]
    assert not agent.state.lease.expired(102.2)


def test_a_holder_refused_later_stops_executing() -> None:
    """Its id went to another boot while it was cut off: it is now the second agent."""
    agent = SyncAgent(make_state())
    answer(agent, 100.0)
    agent.execute([StopVm(name="vm-1", generation=1)], 100.5)
    before = len(agent.log)
    answer(agent, 101.0, refused=REASON)
    agent.execute([DeleteVm(name="vm-2", generation=1)], 101.5)
    assert executed(agent.log[before:]) == []


def test_a_start_before_the_first_ack_is_dropped_not_held() -> None:
    """Without a lease a start is dropped on arrival (it may be stale); the scheduler resends
    it once this agent reports."""
    agent = SyncAgent(make_state())
    agent.execute([StartVm(vm=make_spec(), generation=1)], 100.0)
    answer(agent, 100.0)
    assert executed(agent.log) == []
