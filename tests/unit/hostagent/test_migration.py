"""The agent's part in live migration (hostagent/migration.py through AgentState), without an
event loop: the lease and the leader's epoch, fencing in each phase, a driver that cannot
migrate, and random histories of attempts. The destination's and the source's steps have files
of their own (test_migration_incoming.py, test_migration_outgoing.py); the builders are in
migrationkit.py.

Whole attempts run over the real FakeDriver (with an instant migration model, so that every
driver call settles at once); the phases a driver call spans (sending, a fence meanwhile) are
driven by hand, feeding the state the driver's answers."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from common.messages import (
    AgentCommand,
    DeleteVm,
    ObservedState,
    ObservedVm,
    ResumeVm,
    StartVm,
    VmSpec,
)
from common.migration_messages import FinishIncoming, MigrationReport, MigrationStatus
from hostagent.agent import drive
from hostagent.drivers.base import MigratingDriver
from hostagent.drivers.fake import FakeDriver
from hostagent.stimuli import (
    REPORT_NOW,
    AckReceived,
    CommandsReceived,
    DriverCancelMigration,
    DriverFinishIncoming,
    DriverMigrateOut,
    DriverPause,
    DriverPrepareIncoming,
    FenceTick,
    HeartbeatDue,
    MigrationCall,
    OpDone,
    SendHeartbeat,
)
from tests.unit.hostagent.conftest import ack_for, make_spec, make_state
from tests.unit.hostagent.migrationkit import (
    HERE,
    UNDERLAY,
    T,
    bare_state,
    cancel,
    decisions,
    heartbeat,
    migrate_out,
    observed,
    prepare,
    report_of,
)
from tests.unit.hostagent.syncagent import ROOMY, run_now
from tests.unit.hostagent.test_state import Run

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
