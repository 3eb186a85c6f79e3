"""The agent's part in live migration (hostagent/migration.py through AgentState), without an
event loop: admission, idempotency, epochs, fencing in each phase, and the reports.

Whole attempts run over the real FakeDriver (with an instant migration model, so that every
driver call settles at once); the phases a driver call spans (sending, a fence meanwhile) are
driven by hand, feeding the state the driver's answers."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from common.messages import (
    AgentCommand,
    DeleteVm,
    Heartbeat,
    ObservedState,
    ObservedVm,
    PrepareIncoming,
    ResumeVm,
    StartVm,
    VmSpec,
)
from common.migration_messages import (
    CancelMigration,
    FinishIncoming,
    MigrateOut,
    MigrationReport,
    MigrationStatus,
)
from common.resources import ZERO, Resources
from hostagent.agent import drive
from hostagent.drivers.base import MigratingDriver
from hostagent.drivers.fake import FakeDriver, MigrationModel
from hostagent.execlog import ExecEvent
from hostagent.migration import LOOPBACK
from hostagent.state import AgentState
from hostagent.stimuli import (
    REPORT_NOW,
    AckReceived,
    CommandsReceived,
    DriverCancelMigration,
    DriverDestroy,
    DriverFinishIncoming,
    DriverMigrateOut,
    DriverPause,
    DriverPrepareIncoming,
    Endpoint,
    FenceTick,
    HeartbeatDue,
    Instruction,
    MigrationCall,
    Note,
    OpDone,
    Progress,
    RecordExecution,
    SendHeartbeat,
)
from tests.unit.hostagent.conftest import TEMPLATE, ack_for, make_spec, make_state
from tests.unit.hostagent.syncagent import INSTANT, ROOMY, SyncAgent, run_now
from tests.unit.hostagent.test_state import Run

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


# --------------------------------------------------------------------------- destination


def test_prepare_incoming_reports_ready_with_the_endpoint_at_once() -> None:
    agent = sync_agent()
    rest = agent.execute([prepare()], 100.5)
    assert REPORT_NOW in rest
    prepared = [i for i in agent.log if isinstance(i, DriverPrepareIncoming)]
    assert prepared == [DriverPrepareIncoming(make_spec(), T, UNDERLAY, "h2")]
    state, report = report_of(agent.heartbeat(100.6))
    assert state is ObservedState.INCOMING
    assert report is not None
    assert (report.attempt, report.peer, report.status) == (T, "h2", MigrationStatus.READY)
    assert report.address == UNDERLAY and report.migration_port > 0 and report.nbd_port > 0
    # Audited as held, never as executing.
    audited = [i for i in agent.log if isinstance(i, RecordExecution)]
    assert audited == [RecordExecution("vm-1", T, ExecEvent.INCOMING)]


def test_a_host_without_an_underlay_address_listens_on_loopback() -> None:
    agent = leased(SyncAgent(make_state(), FakeDriver(ROOMY, migration=INSTANT)))
    agent.execute([prepare()], 100.5)
    _, report = report_of(agent.heartbeat(100.6))
    assert report is not None and report.address == LOOPBACK


def test_repeating_prepare_changes_nothing_and_the_report_stands() -> None:
    agent = sync_agent()
    agent.execute([prepare()], 100.5)
    first, seen = agent.heartbeat(100.6), len(agent.log)
    agent.execute([prepare()], 100.7)
    assert decisions(agent.log[seen:]) == []
    assert report_of(agent.heartbeat(100.8)) == report_of(first)


def test_prepare_destroys_an_older_copy_first() -> None:
    agent = sync_agent()
    agent.execute([StartVm(vm=make_spec(), generation=1)], 100.5)
    agent.execute([prepare()], 100.6)
    calls = [i for i in agent.log if isinstance(i, DriverDestroy | DriverPrepareIncoming)]
    assert calls == [
        DriverDestroy("vm-1", 1),
        DriverPrepareIncoming(make_spec(), T, UNDERLAY, "h2"),
    ]
    assert agent.held() == {"vm-1": (T, ObservedState.INCOMING)}


def test_a_stale_prepare_is_ignored() -> None:
    agent = sync_agent()
    agent.execute([StartVm(vm=make_spec(), generation=7)], 100.5)
    seen = len(agent.log)
    agent.execute([prepare(generation=T)], 100.6)
    assert decisions(agent.log[seen:]) == []
    assert agent.held() == {"vm-1": (7, ObservedState.RUNNING)}


def test_a_failed_prepare_is_reported_failed_and_holds_nothing() -> None:
    driver = FakeDriver(Resources(4000, 1024), migration=INSTANT)
    agent = sync_agent(driver)
    agent.execute([prepare(mem_mib=2048)], 100.5)
    state, report = report_of(agent.heartbeat(100.6))
    assert state is ObservedState.FAILED
    assert report is not None and report.status is MigrationStatus.FAILED
    assert "insufficient memory" in report.detail
    assert driver.allocated() == ZERO
    agent.execute([DeleteVm(name="vm-1", generation=T)], 100.7)  # the scheduler clears it
    assert agent.heartbeat(100.8).vms == []


def test_finish_lets_the_incoming_vm_run_and_ends_the_report() -> None:
    agent = sync_agent()
    agent.execute([prepare()], 100.5)
    seen = len(agent.log)
    rest = agent.execute([FinishIncoming(name="vm-1", generation=T)], 100.6)
    assert decisions(agent.log[seen:])[:2] == [
        RecordExecution("vm-1", T, ExecEvent.RESUME),  # logged before it may run
        DriverFinishIncoming("vm-1", T),
    ]
    assert REPORT_NOW in rest
    assert report_of(agent.heartbeat(100.7)) == (ObservedState.RUNNING, None)
    seen = len(agent.log)
    agent.execute([FinishIncoming(name="vm-1", generation=T)], 100.8)  # a repeat
    assert decisions(agent.log[seen:]) == []


def test_a_refused_finish_reports_failed_keeps_the_vm_incoming_and_a_repeat_retries() -> None:
    clock = [1000.0]
    driver = FakeDriver(ROOMY, migration=MigrationModel(0.5), clock_s=lambda: clock[0])
    agent = sync_agent(driver)
    agent.execute([prepare()], 100.5)
    agent.execute([FinishIncoming(name="vm-1", generation=T)], 100.6)
    state, report = report_of(agent.heartbeat(100.7))
    assert state is ObservedState.INCOMING
    assert report is not None and report.status is MigrationStatus.FAILED
    assert (report.attempt, report.peer) == (T, "h2") and "has not arrived" in report.detail
    assert [i.event for i in agent.log if isinstance(i, RecordExecution)] == [
        ExecEvent.INCOMING,
        ExecEvent.RESUME,
        ExecEvent.PAUSE,
    ]
    clock[0] += 1.0
    agent.execute([FinishIncoming(name="vm-1", generation=T)], 100.8)
    assert report_of(agent.heartbeat(100.9)) == (ObservedState.RUNNING, None)


@pytest.mark.parametrize("generation", [T - 1, T + 1], ids=["older", "newer"])
def test_finish_at_another_generation_is_ignored(generation: int) -> None:
    agent = sync_agent()
    agent.execute([prepare()], 100.5)
    seen = len(agent.log)
    agent.execute([FinishIncoming(name="vm-1", generation=generation)], 100.6)
    assert decisions(agent.log[seen:]) == []
    assert agent.held() == {"vm-1": (T, ObservedState.INCOMING)}


def test_resume_never_lets_an_incoming_vm_run() -> None:
    agent = sync_agent()
    agent.execute([prepare()], 100.5)
    agent.execute([ResumeVm(name="vm-1", generation=T)], 100.6)
    assert agent.held() == {"vm-1": (T, ObservedState.INCOMING)}


def test_delete_at_the_attempt_destroys_the_incoming_copy_and_its_report() -> None:
    driver = FakeDriver(ROOMY, migration=INSTANT)
    agent = sync_agent(driver)
    agent.execute([prepare()], 100.5)
    agent.execute([DeleteVm(name="vm-1", generation=T)], 100.6)
    assert agent.heartbeat(100.7).vms == [] and driver.allocated() == ZERO
    assert agent.state.mig.reports == {}


# --------------------------------------------------------------------------- source


def test_a_whole_outgoing_migration_ends_handed_over_and_sent() -> None:
    driver = FakeDriver(ROOMY, migration=INSTANT)
    agent = sync_agent(driver)
    agent.execute([StartVm(vm=make_spec(), generation=1)], 100.5)
    rest = agent.execute([migrate_out()], 100.6)
    assert rest.count(REPORT_NOW) == 2  # sending, then sent
    state, report = report_of(agent.heartbeat(100.7))
    assert state is ObservedState.HANDED_OVER
    assert report is not None
    assert (report.attempt, report.peer, report.status) == (T, "h2", MigrationStatus.SENT)
    assert agent.state.fenced is False
    assert [i.event for i in agent.log if isinstance(i, RecordExecution)][-1] is ExecEvent.PAUSE
    seen = len(agent.log)
    agent.execute([migrate_out(), ResumeVm(name="vm-1", generation=1)], 100.8)  # after the end
    assert decisions(agent.log[seen:]) == []
    agent.execute([DeleteVm(name="vm-1", generation=1)], 100.9)  # the stale source copy
    assert agent.heartbeat(101.0).vms == [] and driver.allocated() == ZERO


def test_sending_reports_progress_then_sent() -> None:
    state = bare_state()
    running = [observed()]
    out = state.handle(CommandsReceived([migrate_out()], running), 100.5)
    assert decisions(out) == [REPORT_NOW, DriverMigrateOut(migrate_out())]
    beat = heartbeat(state, running, 100.6, **{"vm-1": Progress(300, 1024)})
    _, report = report_of(beat)
    assert report is not None and report.status is MigrationStatus.SENDING
    assert (report.transferred_mib, report.total_mib) == (300, 1024)
    again = state.handle(CommandsReceived([migrate_out()], running), 100.7)
    assert decisions(again) == [], "a repeat while sending waits behind the copy"
    handed_over = [observed(state=ObservedState.HANDED_OVER)]
    heartbeat(state, running, 100.8, **{"vm-1": Progress(1024, 1024)})
    done = state.handle(OpDone(DriverMigrateOut(migrate_out()), handed_over), 100.9)
    assert RecordExecution("vm-1", 1, ExecEvent.PAUSE) in done and REPORT_NOW in done
    _, report = report_of(heartbeat(state, handed_over, 101.0))
    assert report == MigrationReport(
        attempt=T, peer="h2", status=MigrationStatus.SENT, transferred_mib=1024, total_mib=1024
    )


def test_a_failed_migration_reports_failed_and_the_vm_runs_on() -> None:
    state = bare_state()
    running = [observed()]
    state.handle(CommandsReceived([migrate_out()], running), 100.5)
    out = state.handle(
        OpDone(DriverMigrateOut(migrate_out()), running, "connection refused"), 100.6
    )
    assert REPORT_NOW in out
    vm_state, report = report_of(heartbeat(state, running, 100.7))
    assert vm_state is ObservedState.RUNNING
    assert report is not None and report.status is MigrationStatus.FAILED
    assert report.detail == "connection refused"
    assert decisions(state.handle(CommandsReceived([migrate_out()], running), 100.8)) == []
    out = state.handle(CommandsReceived([migrate_out(attempt=T + 1)], running), 100.9)
    assert DriverMigrateOut(migrate_out(attempt=T + 1)) in out, "a new attempt goes"


@pytest.mark.parametrize(
    "held",
    [[], [observed(generation=2)], [observed(generation=0)]],
    ids=["unknown", "newer", "older"],
)
def test_migrate_out_of_a_vm_not_here_at_its_generation_reports_nothing(
    held: list[ObservedVm],
) -> None:
    state = bare_state()
    assert decisions(state.handle(CommandsReceived([migrate_out()], held), 100.5)) == []
    assert state.mig.reports == {}


def test_migrate_out_of_an_incoming_vm_leaves_its_ready_report() -> None:
    """An incoming VM is no source: its destination report must stand for its own attempt."""
    agent = sync_agent()
    agent.execute([prepare()], 100.5)
    before = agent.heartbeat(100.6)
    agent.execute([migrate_out(generation=T, attempt=T + 1)], 100.7)
    assert report_of(agent.heartbeat(100.8)) == report_of(before)


def test_migrate_out_of_a_fenced_vm_reports_failed() -> None:
    state = bare_state()
    paused = [observed(state=ObservedState.PAUSED)]
    assert decisions(state.handle(CommandsReceived([migrate_out()], paused), 100.5)) == [REPORT_NOW]
    _, report = report_of(heartbeat(state, paused, 100.6))
    assert report is not None and report.status is MigrationStatus.FAILED
    assert "paused" in report.detail


def test_cancel_ends_the_running_attempt_only() -> None:
    state = bare_state()
    running = [observed()]
    state.handle(CommandsReceived([migrate_out()], running), 100.5)
    for other in (cancel(attempt=T + 1), cancel(generation=2), cancel(name="vm-2")):
        assert decisions(state.handle(CommandsReceived([other], running), 100.6)) == []
    out = state.handle(CommandsReceived([cancel()], running), 100.7)
    assert decisions(out) == [DriverCancelMigration("vm-1", 1, T)]
    assert decisions(state.handle(CommandsReceived([cancel()], running), 100.8)) == []
    state.handle(OpDone(DriverCancelMigration("vm-1", 1, T), running), 100.9)
    state.handle(
        OpDone(DriverMigrateOut(migrate_out()), running, "migration of vm-1 cancelled"), 101.0
    )
    vm_state, report = report_of(heartbeat(state, running, 101.1))
    assert vm_state is ObservedState.RUNNING
    assert report is not None and report.status is MigrationStatus.FAILED
    assert decisions(state.handle(CommandsReceived([cancel()], running), 101.2)) == []


def test_cancel_after_sent_changes_nothing() -> None:
    agent = sync_agent()
    agent.execute([StartVm(vm=make_spec(), generation=1), migrate_out()], 100.5)
    seen = len(agent.log)
    agent.execute([cancel()], 100.6)
    assert decisions(agent.log[seen:]) == []
    assert agent.held() == {"vm-1": (1, ObservedState.HANDED_OVER)}


# --------------------------------------------------------------------------- lease and epochs


@pytest.mark.parametrize(
    "command",
    [prepare(), migrate_out(), FinishIncoming(name="vm-1", generation=T)],
    ids=["prepare", "migrate-out", "finish"],
)
def test_migration_steps_arriving_without_a_lease_are_dropped(command: AgentCommand) -> None:
    state = bare_state()
    held = (
        [observed(generation=T, state=ObservedState.INCOMING)]
        if isinstance(command, FinishIncoming)
        else [observed()]
    )
    assert decisions(state.handle(CommandsReceived([command], held), 104.5)) == []


def test_a_deposed_leaders_migration_commands_are_refused() -> None:
    state = make_state(HERE)
    [send] = [i for i in state.handle(HeartbeatDue([]), 100.0) if isinstance(i, SendHeartbeat)]
    state.handle(AckReceived(msgspec.structs.replace(ack_for(send.heartbeat), epoch=7)), 100.01)
    out = state.handle(CommandsReceived([migrate_out()], [observed()], epoch=6), 100.5)
    assert decisions(out) == []
    out = state.handle(CommandsReceived([migrate_out()], [observed()], epoch=7), 100.6)
    assert DriverMigrateOut(migrate_out()) in out


def test_a_fence_cancels_the_outgoing_migration_before_pausing_the_vm() -> None:
    state = bare_state()
    running = [observed()]
    state.handle(CommandsReceived([migrate_out()], running), 100.5)
    out = decisions(state.handle(FenceTick(running), 104.5))
    assert out.index(DriverCancelMigration("vm-1", 1, T)) < out.index(DriverPause("vm-1", 1))
    assert state.fenced
    assert decisions(state.handle(FenceTick(running), 104.6)) == [], "cancelled once"


def test_a_migration_ended_by_the_fence_says_so() -> None:
    state = bare_state()
    running = [observed()]
    state.handle(CommandsReceived([migrate_out()], running), 100.5)
    state.handle(FenceTick(running), 104.5)
    paused = [observed(state=ObservedState.PAUSED)]
    state.handle(OpDone(DriverMigrateOut(migrate_out()), paused, "migration cancelled"), 104.6)
    vm_state, report = report_of(heartbeat(state, paused, 104.7))
    assert vm_state is ObservedState.PAUSED
    assert report is not None and report.status is MigrationStatus.FAILED
    assert report.detail == "cancelled, lease lost: migration cancelled"


def test_a_handed_over_vm_whose_report_was_lost_reports_sent_again() -> None:
    """An agent restarted after the hand-over (a real driver keeps the VM) has no report: the
    scheduler's repeated MigrateOut gets ``sent`` again, so the switchover can go on."""
    state = bare_state()
    handed_over = [observed(state=ObservedState.HANDED_OVER)]
    assert decisions(state.handle(CommandsReceived([migrate_out()], handed_over), 100.5)) == [
        REPORT_NOW
    ]
    _, report = report_of(heartbeat(state, handed_over, 100.6))
    assert report == MigrationReport(attempt=T, peer="h2", status=MigrationStatus.SENT)


def test_a_fence_leaves_incoming_and_handed_over_vms_as_they_are() -> None:
    state = bare_state()
    held = [
        observed("vm-in", T, ObservedState.INCOMING),
        observed("vm-out", 1, ObservedState.HANDED_OVER),
    ]
    out = decisions(state.handle(FenceTick(held), 104.5))
    assert [i for i in out if isinstance(i, DriverPause | DriverCancelMigration)] == []


def test_a_finish_that_lands_as_the_lease_runs_out_is_paused_at_once() -> None:
    state = bare_state()
    incoming = [observed(generation=T, state=ObservedState.INCOMING)]
    state.handle(CommandsReceived([FinishIncoming(name="vm-1", generation=T)], incoming), 103.9)
    running = [observed(generation=T)]
    out = state.handle(OpDone(DriverFinishIncoming("vm-1", T), running), 104.1)
    assert DriverPause("vm-1", T) in out


def test_a_prepare_answer_carries_the_endpoint_it_reports() -> None:
    state = bare_state()
    state.handle(CommandsReceived([prepare()], []), 100.5)
    op = DriverPrepareIncoming(make_spec(), T, UNDERLAY, "h2")
    incoming = [observed(generation=T, state=ObservedState.INCOMING)]
    state.handle(OpDone(op, incoming, endpoint=Endpoint(UNDERLAY, 50000, 50001)), 100.6)
    _, report = report_of(heartbeat(state, incoming, 100.7))
    assert report == MigrationReport(
        attempt=T,
        peer="h2",
        status=MigrationStatus.READY,
        address=UNDERLAY,
        migration_port=50000,
        nbd_port=50001,
    )


# --------------------------------------------------------------------------- the shell


class PlainDriver:
    """A driver that cannot migrate: the HypervisorDriver part of the fake, and no more."""

    name = "plain"

    def __init__(self) -> None:
        self._fake = FakeDriver(ROOMY)

    async def start(self, spec: VmSpec, generation: int) -> None:
        await self._fake.start(spec, generation)

    async def stop(self, name: str) -> None:
        await self._fake.stop(name)

    async def destroy(self, name: str) -> None:
        await self._fake.destroy(name)

    async def forget(self, name: str, generation: int) -> None:
        await self._fake.forget(name, generation)

    async def pause(self, name: str) -> None:
        await self._fake.pause(name)

    async def resume(self, name: str) -> None:
        await self._fake.resume(name)

    def inventory(self) -> list[ObservedVm]:
        return self._fake.inventory()

    async def close(self) -> None:
        await self._fake.close()


def test_a_driver_that_cannot_migrate_fails_every_migration_call() -> None:
    driver = PlainDriver()
    assert not isinstance(driver, MigratingDriver)
    calls: list[MigrationCall] = [
        DriverPrepareIncoming(make_spec(), T, UNDERLAY, "h2"),
        DriverMigrateOut(migrate_out()),
        DriverCancelMigration("vm-1", 1, T),
        DriverFinishIncoming("vm-1", T),
    ]
    for op in calls:
        done = run_now(drive(driver, op))
        assert (done.error, done.retryable) == ("driver plain cannot migrate", False)


# --------------------------------------------------------------------------- histories

one_vm = st.just("vm-a")
two_generations = st.integers(1, 2)
attempt_steps = st.one_of(
    st.tuples(
        st.just("command"),
        st.one_of(
            st.builds(lambda n, g: StartVm(vm=make_spec(n), generation=g), one_vm, two_generations),
            st.builds(lambda n, g: DeleteVm(name=n, generation=g), one_vm, two_generations),
            st.builds(lambda n, g: ResumeVm(name=n, generation=g), one_vm, two_generations),
            st.builds(lambda n, g: prepare(n, g), one_vm, two_generations),
            st.builds(lambda n, g: migrate_out(n, g, g + 1), one_vm, two_generations),
            st.builds(lambda n, g: FinishIncoming(name=n, generation=g), one_vm, two_generations),
            st.builds(lambda n, g: cancel(n, g, g + 1), one_vm, two_generations),
        ),
    ),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 5.0])),
    st.tuples(st.just("fence"), st.none()),
    st.tuples(st.just("beat"), st.sampled_from(["acked", "lost"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(attempt_steps, max_size=30))
def test_attempt_histories_keep_the_agent_promises(history: list[tuple[str, object]]) -> None:
    """Both sides of attempts on one VM, with leases lost and renewed: nothing executes without
    a lease or on a fenced host, a handed-over VM never runs again, an incoming one only on
    FinishIncoming (Run checks each step), and every report names its VM's attempt."""
    run = Run()
    run.beat(acked=True, held=False)
    for kind, arg in history:
        run.step(kind, arg)
        for vm in run.agent.state.inventory(run.agent.driver.inventory()):
            report = vm.migration
            if vm.state is ObservedState.HANDED_OVER:
                assert report is not None and report.status is MigrationStatus.SENT
            if vm.state is ObservedState.INCOMING and report is not None:
                assert report.attempt == vm.generation
