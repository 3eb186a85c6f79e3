"""Builders for the agent's live-migration tests (test_migration*.py): the commands of an
attempt, the agent on the FakeDriver holding a lease, and its migration reports."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from common.messages import Heartbeat, ObservedState, ObservedVm, PrepareIncoming
from common.migration_messages import CancelMigration, MigrateOut, MigrationReport
from hostagent.drivers.fake import FakeDriver
from hostagent.state import AgentState
from hostagent.stimuli import AckReceived, HeartbeatDue, Instruction, Note, Progress, SendHeartbeat
from tests.unit.hostagent.conftest import TEMPLATE, ack_for, make_spec, make_state
from tests.unit.hostagent.syncagent import INSTANT, ROOMY, SyncAgent

UNDERLAY = "10.0.0.1"
HERE = msgspec.structs.replace(TEMPLATE, underlay_ip=UNDERLAY)
T = 5
"""The attempt: the generation the VM gets on the destination."""


def prepare(name: str = "vm-1", generation: int = T, *, mem_mib: int = 1024) -> PrepareIncoming:
    return PrepareIncoming(vm=make_spec(name, mem_mib=mem_mib), generation=generation, source="h2")


def migrate_out(name: str = "vm-1", generation: int = 1, attempt: int = T) -> MigrateOut:
    return MigrateOut(
        name=name,
        generation=generation,
        target="h2",
        target_generation=attempt,
        address="10.0.0.2",
        migration_port=49152,
        nbd_port=49153,
    )


def cancel(name: str = "vm-1", generation: int = 1, attempt: int = T) -> CancelMigration:
    return CancelMigration(name=name, generation=generation, target_generation=attempt)


def observed(
    name: str = "vm-1", generation: int = 1, state: ObservedState = ObservedState.RUNNING
) -> ObservedVm:
    return ObservedVm(name=name, generation=generation, state=state, cpu_milli=1000, mem_mib=1024)


def decisions(instructions: Sequence[Instruction]) -> list[Instruction]:
    return [i for i in instructions if not isinstance(i, Note)]


def leased(agent: SyncAgent, now_s: float = 100.0) -> SyncAgent:
    """The host id is the agent's and it holds a lease until ``now_s`` + 4 s."""
    agent.handle(AckReceived(ack_for(agent.heartbeat(now_s))), now_s + 0.01)
    return agent


def sync_agent(driver: FakeDriver | None = None) -> SyncAgent:
    return leased(SyncAgent(make_state(HERE), driver or FakeDriver(ROOMY, migration=INSTANT)))


def report_of(
    heartbeat: Heartbeat, name: str = "vm-1"
) -> tuple[ObservedState, MigrationReport | None]:
    [vm] = [vm for vm in heartbeat.vms if vm.name == name]
    return vm.state, vm.migration


def heartbeat(
    state: AgentState, vms: Sequence[ObservedVm], now_s: float, **progress: Progress
) -> Heartbeat:
    [send] = [
        i for i in state.handle(HeartbeatDue(vms, progress), now_s) if isinstance(i, SendHeartbeat)
    ]
    return send.heartbeat


def bare_state() -> AgentState:
    """The pure state alone, holding a lease until 104.0 (for phases driven by hand)."""
    state = make_state(HERE)
    [send] = [i for i in state.handle(HeartbeatDue([]), 100.0) if isinstance(i, SendHeartbeat)]
    state.handle(AckReceived(ack_for(send.heartbeat)), 100.01)
    return state
