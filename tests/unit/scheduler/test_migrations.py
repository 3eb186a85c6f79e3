"""Live migration in the pure core: the hosts' reports in, records, commands and events out."""

from __future__ import annotations

import pytest

from common.fields import ErrorCode
from common.ids import HostId
from common.messages import (
    DeleteVm,
    MigrationOutcome,
    ObservedState,
    PrepareIncoming,
    StartVm,
    StopVm,
    VmRef,
    VmReply,
    VmState,
)
from common.migration_messages import (
    CancelMigration,
    FinishIncoming,
    MigrateOut,
    MigrationCause,
    MigrationPhase,
    MigrationStatus,
)
from common.network_messages import NicRequest, UpdateNetworks
from common.resources import ZERO, Resources
from scheduler.core.contract import Op
from scheduler.core.migrations import in_flight, last_migrated
from tests.unit.scheduler.corekit import CoreKit, commands, vm_events
from tests.unit.scheduler.migkit import (
    beat,
    cluster,
    handed_over,
    incoming,
    migrate,
    running_vm,
    sending,
    source_failed,
    vm_at,
)

SMALL = Resources(1000, 1792)
READY, FAILED = MigrationStatus.READY, MigrationStatus.FAILED


def started(kit: CoreKit, to: str | None = "h2") -> CoreKit:
    """VM ``a`` running on h1 at generation 1, a migration to ``to`` begun."""
    running_vm(kit, "a", "h1")
    reply = migrate(kit, "a", to)
    assert reply.error is None, reply.error
    return kit


def copying(kit: CoreKit) -> CoreKit:
    started(kit)
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    return kit


def phase(kit: CoreKit) -> MigrationPhase | None:
    migration = kit.vm("a").migration
    return migration.phase if migration is not None else None


# --------------------------------------------------------------------------- the happy path


def test_a_migration_moves_the_vm_live_and_changes_its_generation_once() -> None:
    kit = cluster("h1", "h2")
    started(kit)
    record = kit.vm("a")
    assert record.migration is not None
    assert (record.migration.source, record.migration.target) == ("h1", "h2")
    assert (record.migration.attempt, record.max_generation, record.generation) == (2, 2, 1)
    assert record.migration.cause is MigrationCause.REQUEST
    assert kit.allocated("h1") == SMALL and kit.allocated("h2") == SMALL, "held on both"
    [prepare] = [c for c in commands(kit.actions, "h2") if isinstance(c, PrepareIncoming)]
    assert (prepare.vm.name, prepare.generation, prepare.source) == ("a", 2, "h1")
    [event] = vm_events(kit.actions)
    assert event.migration_outcome is MigrationOutcome.STARTED
    assert event.migration is not None and event.migration.phase is MigrationPhase.PREPARING

    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    assert phase(kit) is MigrationPhase.COPYING
    assert kit.vms_on("h2") == set(), "the incoming copy is not an orphan"
    assert not [c for c in commands(kit.actions, "h2") if isinstance(c, DeleteVm)]
    [out] = commands(kit.actions, "h1")
    assert out == MigrateOut(
        name="a",
        generation=1,
        target="h2",
        target_generation=2,
        address="192.0.2.2",
        migration_port=4444,
        nbd_port=10809,
    )

    beat(kit, "h1", [sending("a", 1, 2, "h2", 40)])
    migration = kit.vm("a").migration
    assert migration is not None and (migration.transferred_mib, migration.total_mib) == (40, 100)
    assert kit.vm("a").generation == 1

    beat(kit, "h1", [handed_over("a", 1, 2, "h2")])
    record = kit.vm("a")
    assert (record.host, record.generation, phase(kit)) == ("h2", 2, MigrationPhase.SWITCHING)
    assert kit.result.vms == [record], "the switchover is stored in this step"
    assert FinishIncoming(name="a", generation=2) in commands(kit.actions, "h2")
    assert DeleteVm(name="a", generation=1) in commands(kit.actions, "h1")
    assert not any(isinstance(c, StartVm) for c in commands(kit.actions))
    assert kit.allocated("h2") == SMALL

    beat(kit, "h2", [vm_at("a", 2, ObservedState.RUNNING)])
    record = kit.vm("a")
    assert record.migration is None and record.state is VmState.RUNNING
    assert (record.host, record.generation, record.migrated_at) == ("h2", 2, kit.now().wall)
    [event] = vm_events(kit.actions)
    assert event.reason == "migrated from h1 to h2 (request)"
    assert event.migration_outcome is MigrationOutcome.SUCCEEDED
    beat(kit, "h1", [])
    assert kit.allocated("h1") == ZERO
    assert last_migrated(kit.state) == {"a": kit.now().wall.timestamp()}


def test_disks_and_endpoints_follow_the_vm_at_the_switchover() -> None:
    kit = copying(cluster("h1", "h2"))
    assert {d.host for d in kit.vm("a").disks} == {"h1"}
    beat(kit, "h1", [handed_over("a", 1, 2, "h2")])
    assert {d.host for d in kit.vm("a").disks} == {"h2"}


def test_the_scheduler_picks_the_destination_by_placement() -> None:
    kit = cluster("h1", "h2", "h3")
    running_vm(kit, "b", "h3")  # binpack: h3 is the fuller host
    started(kit, to=None)
    migration = kit.vm("a").migration
    assert migration is not None and migration.target == "h3"


def test_a_destination_that_reports_ready_again_gets_no_second_migrate_out() -> None:
    kit = copying(cluster("h1", "h2"))
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    assert not commands(kit.actions, "h1"), "repeats wait for command_retry_s"
    kit.advance(3.5)
    beat(kit, "h1", [vm_at("a", 1, ObservedState.RUNNING)])
    assert [type(c) for c in commands(kit.actions, "h1")] == [MigrateOut]


def test_a_lost_prepare_is_sent_again() -> None:
    kit = started(cluster("h1", "h2"))
    kit.advance(3.5)
    beat(kit, "h2", [])
    assert [type(c) for c in commands(kit.actions, "h2")] == [PrepareIncoming]


def test_finish_incoming_is_repeated_while_the_destination_waits() -> None:
    kit = copying(cluster("h1", "h2"))
    beat(kit, "h1", [handed_over("a", 1, 2, "h2")])
    kit.advance(3.5)
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    assert commands(kit.actions, "h2") == [FinishIncoming(name="a", generation=2)]


# --------------------------------------------------------------------------- at most one copy


def test_finish_incoming_never_goes_before_the_switchover_is_stored() -> None:
    kit = started(cluster("h1", "h2"))
    seen: list[object] = []
    for inventory in (
        [incoming("a", 2, "h1", READY)],
        [incoming("a", 2, "h1", READY)],
    ):
        kit.advance(3.5)
        beat(kit, "h2", inventory)
        seen += commands(kit.actions)
        beat(kit, "h1", [sending("a", 1, 2, "h2", 10)])
        seen += commands(kit.actions)
    assert not any(isinstance(c, FinishIncoming) for c in seen)
    assert kit.vm("a").host == "h1"


def test_a_handed_over_source_is_never_resumed_or_started_again() -> None:
    kit = copying(cluster("h1", "h2"))
    kit.restart(reload=True)
    for _ in range(3):
        kit.advance(3.5)
        beat(kit, "h2", [incoming("a", 2, "h1", READY)])
        beat(kit, "h1", [handed_over("a", 1, 2, "h2")])
        sent = commands(kit.actions, "h1")
        assert not any(isinstance(c, StartVm) for c in sent)
        assert all(isinstance(c, DeleteVm) and c.generation == 1 for c in sent)


def test_a_handed_over_source_whose_destination_is_down_loses_the_vm_above_the_attempt() -> None:
    kit = copying(cluster("h1", "h2", "h3"))
    kit.host_op(Op.CORDON, "h2")
    kit.step()
    kit.advance(4.0)
    beat(kit, "h1", [sending("a", 1, 2, "h2", 10)])
    beat(kit, "h3", [])
    kit.advance(3.0)  # h2 silent for 7 s: dead; the attempt is being cancelled
    assert phase(kit) is MigrationPhase.CANCELLING
    beat(kit, "h1", [handed_over("a", 1, 2, "h2")])  # too late: the state is on h2
    record = kit.vm("a")
    assert record.migration is None and record.generation == 3
    assert record.state in (VmState.PENDING, VmState.SCHEDULED)


# --------------------------------------------------------------------------- failures


def test_a_destination_that_fails_to_prepare_ends_the_attempt_and_burns_its_number() -> None:
    kit = started(cluster("h1", "h2"))
    beat(kit, "h2", [incoming("a", 2, "h1", FAILED)])
    record = kit.vm("a")
    assert record.migration is None and (record.host, record.generation) == ("h1", 1)
    assert DeleteVm(name="a", generation=2) in commands(kit.actions, "h2")
    [event] = vm_events(kit.actions)
    assert event.migration_outcome is MigrationOutcome.FAILED
    assert "no room for the disks" in event.reason and "stays on h1" in event.reason
    assert kit.allocated("h2") == ZERO
    assert migrate(kit, "a", "h2").error is None
    assert kit.vm("a").migration is not None
    assert kit.vm("a").migration.attempt == 3, "an aborted attempt's number is never reused"  # type: ignore[union-attr]


def test_a_source_that_reports_failure_ends_the_attempt() -> None:
    kit = copying(cluster("h1", "h2"))
    beat(kit, "h1", [source_failed("a", 1, 2, "h2")])
    record = kit.vm("a")
    assert record.migration is None and (record.host, record.generation) == ("h1", 1)
    assert DeleteVm(name="a", generation=2) in commands(kit.actions, "h2")
    assert "connection reset" in record.reason
    assert "a" not in kit.vms_on("h2") and kit.allocated("h2") == ZERO


def test_an_ended_attempts_copy_holds_its_destinations_capacity_until_it_is_gone() -> None:
    kit = copying(cluster("h1", "h2"))
    beat(kit, "h1", [source_failed("a", 1, 2, "h2")])
    assert DeleteVm(name="a", generation=2) in commands(kit.actions, "h2")
    assert kit.core.views.view(HostId("h2")).allocated == SMALL, "the copy is still there"
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])  # not destroyed yet: an orphan
    assert kit.core.views.view(HostId("h2")).allocated == SMALL
    beat(kit, "h2", [])  # gone
    assert kit.core.views.view(HostId("h2")).allocated == ZERO


def test_a_destination_not_ready_in_time_is_given_up() -> None:
    kit = started(cluster("h1", "h2", migration_prepare_timeout_s=10.0))
    for _ in range(3):
        kit.advance(4.0)
        beat(kit, "h1", [vm_at("a", 1, ObservedState.RUNNING)])
        beat(kit, "h2", [])
    assert kit.vm("a").migration is None
    assert "destination not ready after 10s" in kit.vm("a").reason


def test_a_stalled_copy_is_cancelled_and_ends_when_the_source_confirms() -> None:
    kit = copying(cluster("h1", "h2", migration_stall_timeout_s=5.0))
    beat(kit, "h1", [sending("a", 1, 2, "h2", 10)])
    kit.advance(3.0)
    beat(kit, "h1", [sending("a", 1, 2, "h2", 20)])
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    kit.advance(3.0)
    assert phase(kit) is MigrationPhase.COPYING, "it progressed 3 s ago"
    kit.advance(3.0)
    assert phase(kit) is MigrationPhase.CANCELLING
    assert CancelMigration(name="a", generation=1, target_generation=2) in commands(kit.actions)
    assert not [c for c in commands(kit.actions, "h2") if isinstance(c, DeleteVm)], (
        "the destination's copy stays until the source confirms"
    )
    beat(kit, "h1", [source_failed("a", 1, 2, "h2")])
    assert kit.vm("a").migration is None and kit.vm("a").host == "h1"
    assert DeleteVm(name="a", generation=2) in commands(kit.actions, "h2")
    assert "no progress for 5s" in kit.vm("a").reason


def test_a_cancel_request_ends_the_attempt_and_the_vm_runs_on() -> None:
    kit = copying(cluster("h1", "h2"))
    reply = kit.mutate(Op.MIGRATE_CANCEL, VmRef(name="a"))
    assert reply.vm is not None and reply.vm.migration is not None
    assert reply.vm.migration.phase is MigrationPhase.CANCELLING
    assert commands(kit.actions, "h1") == [
        CancelMigration(name="a", generation=1, target_generation=2)
    ]
    again = kit.mutate(Op.MIGRATE_CANCEL, VmRef(name="a"))
    assert again.error is None and not commands(kit.actions)
    beat(kit, "h1", [vm_at("a", 1, ObservedState.RUNNING)])
    assert phase(kit) is MigrationPhase.CANCELLING, "no word of the attempt yet"
    for _ in range(4):
        kit.advance(4.0)
        beat(kit, "h1", [vm_at("a", 1, ObservedState.RUNNING)])
        beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    assert kit.vm("a").migration is None, "the source forgot the attempt: taken as ended"
    assert "cancel requested" in kit.vm("a").reason


def test_a_cancel_before_the_source_was_asked_ends_at_once() -> None:
    kit = started(cluster("h1", "h2"))
    kit.mutate(Op.MIGRATE_CANCEL, VmRef(name="a"))
    assert kit.vm("a").migration is None
    assert DeleteVm(name="a", generation=2) in commands(kit.actions, "h2")


def test_a_cancel_that_comes_too_late_yields_to_the_handover() -> None:
    kit = copying(cluster("h1", "h2"))
    kit.mutate(Op.MIGRATE_CANCEL, VmRef(name="a"))
    beat(kit, "h1", [handed_over("a", 1, 2, "h2")])
    record = kit.vm("a")
    assert (record.host, record.generation, phase(kit)) == ("h2", 2, MigrationPhase.SWITCHING)
    assert not any(
        isinstance(c, DeleteVm) and c.generation == 2 for c in commands(kit.actions, "h2")
    )
    late = kit.mutate(Op.MIGRATE_CANCEL, VmRef(name="a"))
    assert late.error is not None and late.error.code is ErrorCode.INVALID_STATE


def test_a_dead_destination_ends_the_attempt_and_the_vm_runs_on_its_source() -> None:
    kit = copying(cluster("h1", "h2"))
    for _ in range(4):
        kit.advance(2.0)
        beat(kit, "h1", [sending("a", 1, 2, "h2", 10)])
    assert not kit.host("h2").up
    assert phase(kit) is MigrationPhase.CANCELLING
    beat(kit, "h1", [source_failed("a", 1, 2, "h2")])
    record = kit.vm("a")
    assert record.migration is None and (record.host, record.generation) == ("h1", 1)
    assert "destination h2 is down" in record.reason


def test_a_dead_source_loses_the_vm_which_comes_back_above_the_attempt() -> None:
    kit = copying(cluster("h1", "h2", "h3"))
    sent = []
    for _ in range(4):
        sent += commands(kit.advance(2.0), "h2")
        beat(kit, "h2", [incoming("a", 2, "h1", READY)])
        beat(kit, "h3", [])
    assert not kit.host("h1").up
    record = kit.vm("a")
    assert record.migration is None
    assert record.generation == 3, "failover takes a generation above the attempt"
    assert DeleteVm(name="a", generation=2) in sent


def test_stopping_a_migrating_vm_ends_the_attempt() -> None:
    kit = copying(cluster("h1", "h2"))
    kit.mutate(Op.STOP, VmRef(name="a"))
    record = kit.vm("a")
    assert record.migration is None and record.state is VmState.STOPPING
    sent = commands(kit.actions)
    assert CancelMigration(name="a", generation=1, target_generation=2) in sent
    assert StopVm(name="a", generation=1) in sent
    assert DeleteVm(name="a", generation=2) in sent


# --------------------------------------------------------------------------- restarts


@pytest.mark.parametrize("reload", [False, True], ids=["same-records", "stored-records"])
def test_a_restart_mid_migration_carries_on_from_the_stored_record(reload: bool) -> None:
    kit = copying(cluster("h1", "h2"))
    kit.restart(reload=reload)
    assert kit.allocated("h2") == SMALL and kit.state.incoming == {"h2": {"a"}}
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    assert not [c for c in commands(kit.actions, "h2") if isinstance(c, DeleteVm)]
    beat(kit, "h1", [vm_at("a", 1, ObservedState.RUNNING)])
    assert [type(c) for c in commands(kit.actions, "h1")] == [MigrateOut], "sent again"
    beat(kit, "h1", [handed_over("a", 1, 2, "h2")])
    kit.restart(reload=reload)
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    assert commands(kit.actions, "h2") == [FinishIncoming(name="a", generation=2)]
    beat(kit, "h2", [vm_at("a", 2, ObservedState.RUNNING)])
    assert kit.vm("a").migration is None and kit.vm("a").host == "h2"


# --------------------------------------------------------------------------- bad requests


def bad(kit: CoreKit, name: str, to: str | None) -> ErrorCode:
    before = {n: r.migration for n, r in kit.state.vms.items()}
    reply = migrate(kit, name, to)
    assert reply.error is not None and reply.vm is None
    assert {n: r.migration for n, r in kit.state.vms.items()} == before, "nothing changed"
    assert not commands(kit.actions)
    return reply.error.code


def test_bad_migrations_get_typed_errors_and_change_nothing() -> None:
    kit = cluster("h1", "h2", "h3")
    running_vm(kit, "a", "h1")
    kit.host_op(Op.CORDON, "h3")
    assert bad(kit, "nope", "h2") is ErrorCode.NOT_FOUND
    assert bad(kit, "a", "h9") is ErrorCode.INVALID_TARGET
    assert bad(kit, "a", "h1") is ErrorCode.INVALID_TARGET
    assert bad(kit, "a", "h3") is ErrorCode.INVALID_TARGET
    kit.mutate(Op.STOP, VmRef(name="a"))
    assert bad(kit, "a", "h2") is ErrorCode.NOT_MIGRATABLE


def test_a_full_or_down_destination_is_refused() -> None:
    kit = cluster("h1", "h2", "h3")
    running_vm(kit, "a", "h1")
    kit.heartbeat("h2", capacity=Resources(500, 1024), fault_domain="fd-2")
    assert bad(kit, "a", "h2") is ErrorCode.INSUFFICIENT_CAPACITY
    for _ in range(4):
        kit.advance(2.0)
        beat(kit, "h1", kit.running_on("h1"))
    assert not kit.host("h3").up
    assert bad(kit, "a", "h3") is ErrorCode.INVALID_TARGET


def test_a_vm_already_migrating_is_refused() -> None:
    kit = started(cluster("h1", "h2", "h3"))
    assert bad(kit, "a", "h3") is ErrorCode.NOT_MIGRATABLE


def test_a_destination_of_another_driver_or_without_an_underlay_address_is_refused() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", fault_domain="fd-1")
    kit.heartbeat("h2", fault_domain="fd-2")
    running_vm(kit, "a", "h1")
    kit.state.hosts["h2"].driver = "qemu"  # type: ignore[index]
    assert bad(kit, "a", "h2") is ErrorCode.INVALID_TARGET
    assert bad(kit, "a", None) is ErrorCode.INSUFFICIENT_CAPACITY


def test_qemu_hosts_report_their_accelerator_and_migrate_only_between_like_ones() -> None:
    kit = CoreKit()
    for host, fd in (("h1", "fd-1"), ("h2", "fd-2"), ("h3", "fd-3")):
        kit.heartbeat(host, fault_domain=fd, underlay_ip=f"10.0.0.{fd[-1]}")
    running_vm(kit, "a", "h1")
    for host, driver in (("h1", "qemu/tcg"), ("h2", "qemu/kvm"), ("h3", "qemu/tcg")):
        kit.state.hosts[host].driver = driver  # type: ignore[index]
    assert bad(kit, "a", "h2") is ErrorCode.INVALID_TARGET
    reply = migrate(kit, "a", None)
    assert reply.error is None and reply.vm is not None
    assert reply.vm.migration is not None and reply.vm.migration.target == "h3"


def test_migrations_per_host_are_limited() -> None:
    kit = cluster("h1", "h2", "h3", migration_max_per_host=1)
    running_vm(kit, "a", "h1")
    running_vm(kit, "b", "h1")
    assert migrate(kit, "a", "h2").error is None
    assert bad(kit, "b", "h3") is ErrorCode.BUSY
    assert in_flight(kit.state) == {"h1": 1, "h2": 1}


def test_cancelling_a_vm_that_is_not_migrating_is_refused() -> None:
    kit = cluster("h1", "h2")
    running_vm(kit, "a", "h1")
    reply = kit.mutate(Op.MIGRATE_CANCEL, VmRef(name="a"))
    assert reply.error is not None and reply.error.code is ErrorCode.INVALID_STATE
    missing = kit.mutate(Op.MIGRATE_CANCEL, VmRef(name="zz"))
    assert missing.error is not None and missing.error.code is ErrorCode.NOT_FOUND


def test_a_vm_reply_shows_the_migration_under_way() -> None:
    kit = cluster("h1", "h2")
    running_vm(kit, "a", "h1")
    reply: VmReply = migrate(kit, "a", "h2")
    assert reply.vm is not None and reply.vm.migration is not None
    info = reply.vm.migration
    assert (info.source, info.target, info.attempt, info.phase) == (
        "h1",
        "h2",
        2,
        MigrationPhase.PREPARING,
    )


def test_a_vm_with_a_nic_keeps_its_address_and_its_network_goes_to_the_destination_first() -> None:
    kit = cluster("h1", "h2")
    kit.vnet("front", "10.1.0.0/24")
    kit.host_op(Op.CORDON, "h2")
    kit.create("a", nics=[NicRequest(vnet="front")])
    kit.host_op(Op.UNCORDON, "h2")
    beat(kit, "h1", kit.running_on("h1"))
    nics = kit.vm("a").nics
    assert migrate(kit, "a", "h2").error is None
    sent = commands(kit.actions, "h2")
    assert [type(c) for c in sent] == [UpdateNetworks, PrepareIncoming]
    config = sent[0]
    assert isinstance(config, UpdateNetworks)
    assert [lease.ip for lease in config.added[0].leases] == [nics[0].ip]
    beat(kit, "h2", [incoming("a", 2, "h1", READY)])
    beat(kit, "h1", [handed_over("a", 1, 2, "h2")])
    beat(kit, "h2", [vm_at("a", 2, ObservedState.RUNNING)])
    assert kit.vm("a").host == "h2" and kit.vm("a").nics == nics
    assert not kit.state.net.leases.get(HostId("h1")), "h1 no longer carries the network"
