"""The destination's side of a live migration, through AgentState over the FakeDriver:
``PrepareIncoming`` (ready with its endpoint, repeats, an older copy destroyed first, failures)
and ``FinishIncoming`` (the VM runs; refusals, other generations), and the reports."""

from __future__ import annotations

import pytest

from common.messages import DeleteVm, ObservedState, ResumeVm, StartVm
from common.migration_messages import FinishIncoming, MigrationReport, MigrationStatus
from common.resources import ZERO, Resources
from hostagent.drivers.fake import FakeDriver, MigrationModel
from hostagent.execlog import ExecEvent
from hostagent.migration import LOOPBACK
from hostagent.stimuli import (
    REPORT_NOW,
    CommandsReceived,
    DriverDestroy,
    DriverFinishIncoming,
    DriverPrepareIncoming,
    Endpoint,
    OpDone,
    RecordExecution,
)
from tests.unit.hostagent.conftest import make_spec, make_state
from tests.unit.hostagent.migrationkit import (
    UNDERLAY,
    T,
    bare_state,
    decisions,
    heartbeat,
    leased,
    observed,
    prepare,
    report_of,
    sync_agent,
)
from tests.unit.hostagent.syncagent import INSTANT, ROOMY, SyncAgent


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
