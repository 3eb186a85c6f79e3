"""The source's side of a live migration, through AgentState: ``MigrateOut`` (sending with
progress, handed over and sent, failures, VMs that cannot be sources) and ``CancelMigration``."""

from __future__ import annotations

import pytest

from common.messages import DeleteVm, ObservedState, ObservedVm, ResumeVm, StartVm
from common.migration_messages import MigrationReport, MigrationStatus
from common.resources import ZERO
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecEvent
from hostagent.stimuli import (
    REPORT_NOW,
    CommandsReceived,
    DriverCancelMigration,
    DriverMigrateOut,
    OpDone,
    Progress,
    RecordExecution,
)
from tests.unit.hostagent.conftest import make_spec
from tests.unit.hostagent.migrationkit import (
    T,
    bare_state,
    cancel,
    decisions,
    heartbeat,
    migrate_out,
    observed,
    prepare,
    report_of,
    sync_agent,
)
from tests.unit.hostagent.syncagent import INSTANT, ROOMY


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
