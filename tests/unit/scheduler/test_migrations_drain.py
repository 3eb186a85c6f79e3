"""Drain by live migration in the pure core (test_drain.py has the stop-and-start drains)."""

from __future__ import annotations

from common.messages import HostEvent, StopVm, VmState
from common.migration_messages import MigrationCause, MigrationPhase
from scheduler.core.contract import Emit, Op
from scheduler.core.migrations import in_flight
from tests.unit.scheduler.corekit import CoreKit, commands, vm_events
from tests.unit.scheduler.migkit import Hosts, cluster, migrate, running_vm


def three_on_h1(**config: object) -> tuple[CoreKit, Hosts]:
    kit = cluster("h1", "h2", "h3", **config)
    for name in ("a", "b", "c"):
        running_vm(kit, name, "h1")
    hosts = Hosts(kit, "h1", "h2", "h3")
    hosts.adopt()
    return kit, hosts


def drained(kit: CoreKit) -> bool:
    return not kit.host("h1").draining and not kit.vms_on("h1")


def test_a_drain_moves_each_running_vm_live_a_few_at_a_time() -> None:
    kit, hosts = three_on_h1(drain_parallelism=2, migration_max_per_host=4)
    actions = kit.host_op(Op.DRAIN, "h1")
    hosts.carry_out(actions)
    moving = {n for n in "abc" if kit.vm(n).migration is not None}
    assert len(moving) == 2, "the drain's parallelism covers live moves"
    for name in moving:
        migration = kit.vm(name).migration
        assert migration is not None and migration.cause is MigrationCause.DRAIN
        assert kit.vm(name).drained_from == "h1"
    assert not any(isinstance(c, StopVm) for c in commands(actions))
    assert kit.host_op(Op.DRAIN, "h1")  # repeating it changes nothing
    seen: list[object] = []
    for _ in range(12):
        hosts.beat_all()
        seen += vm_events(kit.actions)
        hosts.carry_out(kit.advance(0.5))
        seen += vm_events(kit.actions)
    assert drained(kit)
    for name in "abc":
        record = kit.vm(name)
        assert record.state is VmState.RUNNING and record.host in ("h2", "h3")
        assert (record.generation, record.drained_from, record.migration) == (2, None, None)
        assert record.reason.startswith("migrated from h1 to h")
        assert record.reason.endswith("(drain)")
    states = {e.state for e in seen if hasattr(e, "state") and e.name in "abc"}  # type: ignore[attr-defined]
    assert states == {VmState.RUNNING}, "the vms never stopped"


def test_a_drain_host_event_reports_what_is_left() -> None:
    kit, hosts = three_on_h1(drain_parallelism=1, migration_max_per_host=3)
    hosts.carry_out(kit.host_op(Op.DRAIN, "h1"))
    reasons: list[str] = []

    def note() -> None:
        events = [a.event for a in kit.actions if isinstance(a, Emit)]
        reasons.extend(e.reason for e in events if isinstance(e, HostEvent))

    for _ in range(16):
        hosts.beat_all()
        note()
        hosts.carry_out(kit.advance(0.5))
        note()
    assert reasons == ["draining: 2 vms left", "draining: 1 vms left", "drain complete"]


def test_a_cold_drain_stops_and_starts() -> None:
    kit, _ = three_on_h1(drain_parallelism=3)
    actions = kit.host_op(Op.DRAIN, "h1", cold=True)
    assert {c.name for c in commands(actions, "h1") if isinstance(c, StopVm)} == {"a", "b", "c"}
    assert all(kit.vm(n).migration is None for n in "abc")
    assert kit.host("h1").drain_cold


def test_a_drain_waits_for_migration_slots_rather_than_stopping_vms() -> None:
    kit, hosts = three_on_h1(drain_parallelism=3, migration_max_per_host=1)
    actions = kit.host_op(Op.DRAIN, "h1")
    hosts.carry_out(actions)
    assert sum(kit.vm(n).migration is not None for n in "abc") == 1
    assert not any(isinstance(c, StopVm) for c in commands(actions))
    assert max(in_flight(kit.state).values()) == 1
    hosts.rounds(20)
    assert drained(kit)
    assert all(kit.vm(n).generation == 2 for n in "abc"), "each moved live, once"


def test_a_vm_that_cannot_migrate_moves_by_stop_and_start_with_the_reason() -> None:
    kit = cluster("h1", "h2")
    running_vm(kit, "a", "h1")
    kit.host_op(Op.CORDON, "h2")
    kit.create("b")  # placed on h1, not yet running: it cannot migrate
    kit.host_op(Op.UNCORDON, "h2")
    assert (kit.vm("b").host, kit.vm("b").state) == ("h1", VmState.SCHEDULED)
    kit.host_op(Op.DRAIN, "h1")
    assert kit.vm("b").state is VmState.STOPPING
    assert kit.vm("b").reason == (
        "moving off draining host h1 by stop and start: "
        "vm 'b' is scheduled: only a running vm migrates live"
    )
    assert kit.vm("a").migration is not None, "the running one moves live"


def test_a_failed_live_move_falls_back_to_stop_and_start() -> None:
    kit, hosts = three_on_h1(drain_parallelism=1, migration_max_per_host=1)
    hosts.refuse_out = {"a"}
    hosts.carry_out(kit.host_op(Op.DRAIN, "h1"))
    assert kit.vm("a").migration is not None
    stopped = []
    for _ in range(30):
        hosts.beat_all()
        stopped += [c.name for c in commands(kit.actions, "h1") if isinstance(c, StopVm)]
        hosts.carry_out(kit.advance(0.5))
        stopped += [c.name for c in commands(kit.actions, "h1") if isinstance(c, StopVm)]
    assert "a" in stopped
    assert drained(kit)
    assert kit.vm("a").state is VmState.RUNNING and kit.vm("a").generation >= 3
    assert kit.vm("b").generation == 2 and kit.vm("c").generation == 2


def test_a_vm_migrating_on_request_is_left_to_finish_by_a_drain() -> None:
    kit, hosts = three_on_h1(drain_parallelism=3, migration_max_per_host=4)
    assert migrate(kit, "a", "h2").error is None
    kit.host_op(Op.DRAIN, "h1")
    migration = kit.vm("a").migration
    assert migration is not None and migration.cause is MigrationCause.REQUEST
    assert migration.phase is MigrationPhase.PREPARING
    hosts.rounds(10)
    assert drained(kit) and kit.vm("a").host == "h2"


def test_a_live_move_that_fails_after_the_drain_was_called_off_leaves_the_vm_be() -> None:
    kit, hosts = three_on_h1(drain_parallelism=1, migration_max_per_host=1)
    hosts.refuse_out = {"a"}
    hosts.carry_out(kit.host_op(Op.DRAIN, "h1"))
    assert kit.vm("a").drained_from == "h1"
    kit.host_op(Op.UNCORDON, "h1")
    hosts.rounds(4)
    record = kit.vm("a")
    assert (record.host, record.state, record.migration) == ("h1", VmState.RUNNING, None)
    assert record.drained_from is None, "no drain is moving it any more"
    assert record.generation == 1


def test_a_drain_of_a_host_vms_are_migrating_to_waits_for_them_and_moves_them_on() -> None:
    kit, hosts = three_on_h1(drain_parallelism=3, migration_max_per_host=4)
    hosts.carry_out(kit.host_op(Op.CORDON, "h3"))
    hosts.carry_out(kit.host_op(Op.DRAIN, "h1"))  # a, b and c head for h2
    assert {kit.vm(n).migration.target for n in "abc"} == {"h2"}  # type: ignore[union-attr]
    hosts.carry_out(kit.host_op(Op.UNCORDON, "h3"))
    hosts.carry_out(kit.host_op(Op.DRAIN, "h2"))  # while they are on their way to it
    assert kit.host("h2").draining, "not complete while vms are arriving"
    for _ in range(24):
        hosts.beat_all()
        hosts.carry_out(kit.advance(0.5))
    assert drained(kit)
    assert not kit.host("h2").draining and not kit.vms_on("h2")
    for name in "abc":
        record = kit.vm(name)
        assert record.state is VmState.RUNNING and record.host == "h3", (name, record.host)
