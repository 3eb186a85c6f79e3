"""AgentState, the agent's pure core: admission, fencing and the report, without an event loop.

Random histories of commands, time, watchdog looks, heartbeats and acks run against the real
state over the real FakeDriver; the properties are the promises the scheduler builds on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from hypothesis import given, settings, strategies as st
from msgspec.structs import replace

from common import codec
from common.messages import (
    AgentCommand,
    DeleteVm,
    ObservedState,
    PrepareIncoming,
    ResumeVm,
    StartVm,
    StopVm,
)
from common.migration_messages import CancelMigration, FinishIncoming
from common.network_messages import ConfigureNetworks, UpdateNetworks
from common.replica_messages import ConfigureReplicas, SetDiskReplicas, UpdateReplicas
from hostagent.execlog import ExecEvent
from hostagent.stimuli import (
    AckReceived,
    CommandsReceived,
    DriverCall,
    DriverForget,
    DriverPause,
    DriverStart,
    Instruction,
    Note,
    RecordExecution,
)
from hostagent.vmcommands import VmAnyCommand, command_vm_name
from tests.unit.hostagent.conftest import ack_for, make_spec, make_state
from tests.unit.hostagent.migrationkit import migrate_out
from tests.unit.hostagent.syncagent import SyncAgent

EXECUTING = (ObservedState.RUNNING, ObservedState.STARTING)
STARTS = (ExecEvent.START, ExecEvent.RUNNING, ExecEvent.RESUME)
"""Execution log events after which a VM may execute."""


def start(name: str = "vm-1", generation: int = 1) -> StartVm:
    return StartVm(vm=make_spec(name), generation=generation)


def decisions(instructions: list[Instruction]) -> list[Instruction]:
    return [i for i in instructions if not isinstance(i, Note)]


def test_starts_and_resumes_arriving_without_a_lease_are_dropped() -> None:
    """A start sent before a partition healed arrives with an ack right behind it: judged at
    arrival (lease expired), not when it runs (lease renewed), or it could run beside its
    replacement."""
    agent = SyncAgent(make_state())
    agent.handle(AckReceived(ack_for(agent.heartbeat(90.0))), 90.1)  # the host id is ours
    resume = ResumeVm(name="vm-1", generation=1)
    delete = DeleteVm(name="vm-2", generation=1)
    out = agent.state.handle(CommandsReceived([start(), resume, delete], []), 100.0)
    assert decisions(out) == [DriverForget("vm-2", 1)]


def test_a_start_is_logged_before_the_driver_is_asked() -> None:
    """The execution log must never miss a VM that may run: the line comes first."""
    agent = SyncAgent(make_state())
    agent.handle(AckReceived(ack_for(agent.heartbeat(100.0))), 100.1)
    out = agent.state.handle(CommandsReceived([start()], []), 100.2)
    assert decisions(out) == [
        RecordExecution("vm-1", 1, ExecEvent.START),
        DriverStart(make_spec(), 1),
    ]


def test_a_deposed_leaders_commands_and_acks_are_refused() -> None:
    """Once a newer scheduler leader has been heard from, an older one (not yet aware it lost
    its lease) can neither start anything nor renew the host's lease."""
    agent = SyncAgent(make_state())
    newer = msgspec.structs.replace(ack_for(agent.heartbeat(100.0)), epoch=7)
    agent.handle(AckReceived(newer), 100.1)
    assert agent.state.epochs.newest == 7
    out = agent.state.handle(CommandsReceived([start()], [], epoch=6), 100.2)
    assert decisions(out) == []
    stale = msgspec.structs.replace(ack_for(agent.heartbeat(103.0)), epoch=6)
    before = agent.state.lease
    assert decisions(agent.state.handle(AckReceived(stale), 103.1)) == []
    assert agent.state.lease == before  # renewed nothing
    out = agent.state.handle(CommandsReceived([start()], [], epoch=7), 103.2)
    assert DriverStart(make_spec(), 1) in decisions(out)


def test_an_ack_later_than_an_interval_still_renews_the_lease_from_its_send() -> None:
    """A loaded scheduler answers late: every ack 1.5 s after its heartbeat (interval 1 s,
    fence after 4 s). Each still renews the lease, from when its heartbeat left, so the host
    never fences; an ack later than ``fence_after_s`` renews nothing."""
    agent = SyncAgent(make_state(interval_s=1.0, fence_after_s=4.0))
    for second in range(10):
        sent_at = 100.0 + second
        agent.handle(AckReceived(ack_for(agent.heartbeat(sent_at))), sent_at + 1.5)
        assert agent.state.lease.expires_at_s == sent_at + 4.0
        assert not agent.state.fenced
    before = agent.state.lease
    too_late = ack_for(agent.heartbeat(111.0))
    assert decisions(agent.state.handle(AckReceived(too_late), 115.5)) == []
    assert agent.state.lease == before


# --------------------------------------------------------------------------- histories

names = st.sampled_from(["vm-a", "vm-b"])
generations = st.integers(1, 4)
commands = st.one_of(
    st.builds(start, names, generations),
    st.builds(lambda n, g: StopVm(name=n, generation=g), names, generations),
    st.builds(lambda n, g: DeleteVm(name=n, generation=g), names, generations),
    st.builds(lambda n, g: ResumeVm(name=n, generation=g), names, generations),
)
migration_commands = st.one_of(
    st.builds(
        lambda n, g: PrepareIncoming(vm=make_spec(n), generation=g, source="h2"), names, generations
    ),
    st.builds(
        migrate_out,
        names,
        generations,
        generations,
    ),
    st.builds(lambda n, g: FinishIncoming(name=n, generation=g), names, generations),
    st.builds(
        lambda n, g, t: CancelMigration(name=n, generation=g, target_generation=t),
        names,
        generations,
        generations,
    ),
)
commands = st.one_of(commands, migration_commands)
steps = st.one_of(
    st.tuples(st.just("command"), commands),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 5.0])),
    st.tuples(st.just("fence"), st.none()),
    st.tuples(st.just("beat"), st.sampled_from(["acked", "acked-held", "lost", "refused"])),
)


@dataclass
class Run:
    """One agent and its clock; every step checks the promises that hold at all times."""

    agent: SyncAgent = field(default_factory=lambda: SyncAgent(make_state()))
    now_s: float = 100.0
    finishes: set[tuple[str, int]] = field(default_factory=set)
    """The FinishIncoming commands sent, as (vm, generation)."""

    def step(self, kind: str, arg: object) -> None:
        before, held = len(self.agent.log), self.agent.held()
        if kind == "command":
            assert isinstance(arg, VmAnyCommand)
            self.command(arg)
        elif kind == "advance":
            assert isinstance(arg, float)
            self.now_s += arg
        elif kind == "fence":
            self.agent.fence(self.now_s)
        else:
            self.beat(acked=arg != "lost", held=arg == "acked-held", refused=arg == "refused")
        self.check(self.agent.log[before:])
        self.check_migrations(held)

    def command(self, command: AgentCommand) -> None:
        assert not isinstance(
            command,
            ConfigureNetworks
            | UpdateNetworks
            | ConfigureReplicas
            | UpdateReplicas
            | SetDiskReplicas,
        )
        name = command_vm_name(command)
        held_before = self.agent.held().get(name)
        if isinstance(command, FinishIncoming):
            self.finishes.add((command.name, command.generation))
        start_at = len(self.agent.log)
        self.agent.execute([command], self.now_s)
        if held_before is not None and held_before[0] > command.generation:
            # a command for an older generation never executes
            assert self.agent.held().get(name) == held_before
            assert not [
                i for i in self.agent.log[start_at:] if isinstance(i, DriverCall | RecordExecution)
            ]

    def beat(self, *, acked: bool, held: bool, refused: bool = False) -> None:
        heartbeat = self.agent.heartbeat(self.now_s)
        full = self.agent.state.inventory(self.agent.driver.inventory())
        # the digest stands for the full inventory, whether it is sent or left out; the
        # inventory and its digest kept from earlier reports equal ones made from scratch
        _, recounted = self.agent.driver.recount()
        assert full == self.agent.state.inventory(recounted)
        assert heartbeat.inventory_digest == codec.inventory_digest(full)
        assert heartbeat.vms == ([] if heartbeat.vms_omitted else full)
        if acked:
            digest = heartbeat.inventory_digest if held else ""
            ack = ack_for(heartbeat, digest=digest)
            if refused:  # another live agent holds the host id
                ack = replace(ack, refused="host id h1 is held by another agent", claim_after_s=2.5)
            self.agent.handle(AckReceived(ack), self.now_s + 0.1)

    def check_migrations(self, before: dict[str, tuple[int, ObservedState]]) -> None:
        """A handed-over VM never executes again; an incoming one only once told to finish (the
        FinishIncoming may have been held until the host id was the agent's)."""
        for name, (generation, state) in self.agent.held().items():
            was = before.get(name)
            if was is None or was[0] != generation or state not in EXECUTING:
                continue
            assert was[1] is not ObservedState.HANDED_OVER, "a handed-over vm ran again"
            if was[1] is ObservedState.INCOMING:
                assert (name, generation) in self.finishes

    def check(self, new: list[Instruction]) -> None:
        if not self.agent.state.claim.admitted:
            ran = [i for i in new if isinstance(i, DriverCall) and not isinstance(i, DriverPause)]
            assert ran == [], "an agent whose host id is not accepted executes nothing"
        executing = [vm for vm, (_, state) in self.agent.held().items() if state in EXECUTING]
        if self.agent.state.fenced:
            assert executing == [], "a fenced host executes nothing"
        if self.agent.state.lease.expired(self.now_s):
            started = [i for i in new if isinstance(i, RecordExecution) and i.event in STARTS]
            assert started == [], "nothing starts or resumes without a lease"


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=40))
def test_histories_keep_the_agent_promises(history: list[tuple[str, object]]) -> None:
    run = Run()
    for kind, arg in history:
        run.step(kind, arg)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=30), commands)
def test_the_same_command_twice_does_nothing_the_second_time(
    history: list[tuple[str, object]], command: AgentCommand
) -> None:
    """The scheduler resends commands until it sees their effect: a repeat changes nothing
    (the only driver call it may make is forgetting a deleted VM's disks again; a refused
    FinishIncoming is asked again, but the instant fake migration never refuses one)."""
    run = Run()
    for kind, arg in history:
        run.step(kind, arg)
    run.agent.execute([command], run.now_s)
    held, seen = run.agent.held(), len(run.agent.log)
    run.agent.execute([command], run.now_s)
    again = [i for i in run.agent.log[seen:] if not isinstance(i, Note | DriverForget)]
    assert again == []
    assert run.agent.held() == held
