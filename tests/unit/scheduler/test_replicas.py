"""Replicated disks in the core: the kind chosen at create, copies placed with the VM in
distinct fault domains, starts held until every copy is ready, the spec naming the copies,
copies lost with their host and the VM restarted with its disks elsewhere."""

from __future__ import annotations

import pytest

from common.fields import ErrorCode
from common.ids import HostId
from common.messages import CaptureVm, DiskStorage, StartVm, VmRef, VmState
from common.replica_messages import (
    ConfigureReplicas,
    ReplicaInfo,
    SetDiskReplicas,
    UpdateReplicas,
)
from hostagent.report import InventoryReport
from scheduler.core.contract import Mutation, Op
from scheduler.core.views import vm_info
from scheduler.state.storage import CopyState
from tests.unit.scheduler.corekit import acks, vm_events
from tests.unit.scheduler.replkit import PORT, ReplicaKit


def kit_of(*domains: str, replicas: int = 2, **config: object) -> ReplicaKit:
    """Hosts h1, h2, ... in the fault domains given, serving replicas."""
    kit = ReplicaKit(replicas=replicas, **config)
    for n, domain in enumerate(domains, start=1):
        kit.add_host(f"h{n}", domain)
    return kit


def started(kit: ReplicaKit, vm: str) -> StartVm:
    (start,) = [c for c in kit.sent(StartVm) if isinstance(c, StartVm) and c.vm.name == vm][-1:]
    return start


# --------------------------------------------------------------------------- the kind


def test_auto_is_host_local_while_the_hosts_span_too_few_fault_domains() -> None:
    kit = kit_of("fd-a", "fd-a")
    kit.create("web", data_disks_mib=[512])
    assert {d.storage for d in kit.vm("web").disks} == {DiskStorage.HOST_LOCAL}


def test_auto_is_replicated_once_the_hosts_span_enough_fault_domains() -> None:
    kit = kit_of("fd-a", "fd-b")
    kit.create("web", data_disks_mib=[512])
    assert {d.storage for d in kit.vm("web").disks} == {DiskStorage.REPLICATED}


def test_hosts_that_serve_no_replicas_do_not_count_for_auto() -> None:
    kit = ReplicaKit()
    kit.add_host("h1", "fd-a")
    kit.add_host("h2", "fd-b", port=0)
    kit.create("web")
    assert kit.vm("web").disks[0].storage is DiskStorage.HOST_LOCAL


def test_cordoned_hosts_do_not_count_for_auto_they_take_no_new_copies() -> None:
    kit = kit_of("fd-a", "fd-b")
    kit.host_op(Op.CORDON, "h2")
    kit.create("web")
    record = kit.vm("web")
    assert record.disks[0].storage is DiskStorage.HOST_LOCAL
    assert record.state is not VmState.PENDING, record.reason  # placed, not waiting for copies


def test_replicated_asked_for_with_too_few_fault_domains_is_refused_and_changes_nothing() -> None:
    kit = kit_of("fd-a", "fd-a", replicas=3)
    reply = kit.create("web", storage=DiskStorage.REPLICATED)
    assert reply.error is not None
    assert reply.error.code is ErrorCode.INSUFFICIENT_CAPACITY
    assert "3 fault domains" in reply.error.detail and "fd-a" in reply.error.detail
    assert "web" not in kit.state.vms


def test_host_local_asked_for_stays_host_local() -> None:
    kit = kit_of("fd-a", "fd-b")
    kit.create("web", storage=DiskStorage.HOST_LOCAL)
    assert kit.vm("web").disks[0].storage is DiskStorage.HOST_LOCAL


def test_the_configured_default_kind_applies() -> None:
    kit = kit_of("fd-a", "fd-b", storage={"default_kind": "host_local"})
    kit.create("web")
    assert kit.vm("web").disks[0].storage is DiskStorage.HOST_LOCAL


# --------------------------------------------------------------------------- placement, start


def test_a_new_vm_gets_a_copy_on_its_host_and_one_in_another_fault_domain() -> None:
    kit = kit_of("fd-a", "fd-a", "fd-b")
    kit.create("web", data_disks_mib=[512])
    record = kit.vm("web")
    assert record.state is VmState.SCHEDULED
    for hosts in kit.copies("web", CopyState.CURRENT):
        assert hosts[0] == record.host
        assert len({kit.domains[h] for h in hosts}) == 2


def test_the_vm_starts_only_once_every_copy_is_ready_and_its_spec_names_them() -> None:
    kit = kit_of("fd-a", "fd-b")
    kit.create("web", data_disks_mib=[512])
    record = kit.vm("web")
    assert record.reason == "waiting for its disk copies to be ready"
    assert not kit.sent(StartVm)
    host = record.host
    assert host is not None
    other = "h2" if host == "h1" else "h1"
    sets = kit.sent(UpdateReplicas)
    assert sets
    assert all(isinstance(c, UpdateReplicas) and c.digest for c in sets)
    kit.held_back[other] = {record.disks[1].disk_id}
    kit.beat_all()
    kit.beat_all()
    assert not kit.sent(StartVm)  # the data disk's copy on the other host is not ready
    kit.held_back[other] = set()
    kit.beat(other)
    start = started(kit, "web")
    assert start.vm.disks[0].storage is DiskStorage.REPLICATED
    for disk in start.vm.disks:
        assert [r.host for r in disk.replicas] == [host, other]  # its own host's first
        assert {(r.address, r.port) for r in disk.replicas} == {("127.0.0.1", PORT)}
    kit.beat(host)
    assert kit.vm("web").state is VmState.RUNNING


def test_copies_ready_one_report_at_a_time_are_stored_once_with_the_start() -> None:
    """Each copy host's report says its copy is ready; the VM's record is written once, in the
    step that starts it, with every copy recorded made (not once per copy)."""
    kit = kit_of("fd-a", "fd-b", "fd-c", replicas=3)
    kit.create("web", data_disks_mib=[512])
    kit.beat_all()  # the hosts make their copies
    stored_in = []
    for host in sorted(kit.domains):
        kit.beat(host)
        if any(r.name == "web" for r in kit.result.vms):
            stored_in.append(host)
    start = started(kit, "web")
    assert stored_in == [sorted(kit.domains)[-1]], "stored in the step that starts it only"
    assert all(len(d.replicas) == 3 for d in start.vm.disks)
    assert all(c.made for d in kit.vm("web").disks for c in d.copies)


def test_a_copy_served_then_made_again_before_its_vm_starts_is_dropped_as_lost() -> None:
    """A copy its host reported ready (not yet recorded made: its VM did not start) and then
    reports being made again was lost there: it is dropped, as a made one is."""
    kit = kit_of("fd-a", "fd-b", "fd-c")
    kit.create("web")
    record = kit.vm("web")
    [holders] = kit.copies("web")
    host, other = holders[0], holders[1]
    disk = record.disks[0].disk_id
    kit.held_back[other] = {disk}
    for _ in range(2):  # the copy is made on ``host``, and reported ready
        kit.beat(host)
        kit.beat(other)
    assert not kit.sent(StartVm)
    kit.made[host].discard(disk)
    kit.new[host] = {disk}  # its host wiped, makes it anew
    kit.beat(host)
    assert host not in kit.copies("web")[0]
    assert "was lost there" in kit.vm("web").reason


def test_a_replica_set_goes_as_changes_and_whole_once_the_host_stays_behind() -> None:
    kit = kit_of("fd-a", "fd-b", command_retry_s=2.0)
    kit.create("web")
    (first,) = kit.sent(UpdateReplicas, "h2")
    assert isinstance(first, UpdateReplicas)
    assert first.base == "" and len(first.added) == 1 and not first.removed
    assert not kit.sent(ConfigureReplicas, "h2")
    kit.sent_sets.pop("h2")  # lost on the way: the host keeps reporting the set before it
    kit.beat("h2")
    assert not kit.sent(ConfigureReplicas, "h2")  # the update may still be on its way
    kit.t += 3.0
    kit.beat("h2")
    (whole,) = kit.sent(ConfigureReplicas, "h2")
    assert isinstance(whole, ConfigureReplicas)
    assert whole.digest == first.digest and whole.replicas == first.added
    kit.beat("h2")
    assert kit.applied["h2"].digest == first.digest
    assert len(kit.sent(ConfigureReplicas, "h2")) == 1  # the host holds it: nothing more


def test_a_host_reporting_a_digest_no_update_led_to_gets_the_whole_set_at_once() -> None:
    kit = kit_of("fd-a", "fd-b", command_retry_s=2.0)
    run(kit, "web")
    kit.mutate(Op.STOP, VmRef(name="web"))  # no write fails its copy on h2 while h2 is away
    kit.beat_all()
    assert not kit.sent(ConfigureReplicas, "h2")
    kit.kill("h2", wipe=True)  # its agent comes back with nothing: it reports ""
    kit.advance(3.0)  # silent long enough for a new boot to take the host id, not dead
    kit.beat_all()
    kit.revive("h2")
    assert kit.state.hosts[HostId("h2")].up
    (whole,) = kit.sent(ConfigureReplicas, "h2")
    assert isinstance(whole, ConfigureReplicas)
    assert whole == kit.wanted_set("h2")


def run(kit: ReplicaKit, vm: str, **create: object) -> str:
    """Create ``vm`` and bring it to running; its host."""
    kit.create(vm, **create)  # type: ignore[arg-type]
    for _ in range(3):  # the copies are made, the VM is started, it runs
        kit.beat_all()
    record = kit.vm(vm)
    assert record.state is VmState.RUNNING, record.reason
    assert record.host is not None
    return record.host


# --------------------------------------------------------------------------- losses


def kill(kit: ReplicaKit, host: str) -> None:
    """``host`` goes silent; the others keep reporting until it is declared dead."""
    kit.kill(host)
    for _ in range(8):
        kit.advance(1.0)
        kit.beat_all()


def test_a_dead_hosts_copies_are_lost_and_its_vm_restarts_with_its_disks_on_a_copy_holder() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c")
    host = run(kit, "web", data_disks_mib=[512])
    [survivor] = [h for h in kit.copies("web")[0] if h != host]
    kill(kit, host)
    record = kit.vm("web")
    assert record.state is VmState.RUNNING
    assert record.host == survivor  # preferred: it holds a current copy
    assert all(host not in hosts for hosts in kit.copies("web"))
    start = started(kit, "web")
    assert all(host not in [r.host for r in d.replicas] for d in start.vm.disks)


def test_no_event_of_a_failover_with_replicated_disks_says_rebuilt() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c")
    host = run(kit, "web", data_disks_mib=[512])
    events = []
    kit.kill(host)
    for _ in range(8):
        events += vm_events(kit.advance(1.0))
        for h in list(kit.domains):
            events += vm_events(kit.beat(h))
    reasons = [e.reason for e in events if e.name == "web"]
    assert any("restart" in r and "with its disks" in r for r in reasons), reasons
    assert not any("rebuilt" in r for r in reasons), reasons


def test_a_copy_that_failed_a_write_is_dropped_before_the_smaller_set_is_sent() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c", replicas=3)
    host = run(kit, "web")
    [other, *_] = [h for h in kit.copies("web")[0] if h != host]
    kit.fail_copy("web", other)
    actions = kit.beat(host)
    assert other not in kit.copies("web")[0]
    stored = [r for r in kit.result.vms if r.name == "web"]
    assert stored and other not in [c.host for c in stored[0].disks[0].copies]
    sets = [c for c in kit.sent(SetDiskReplicas, host) if isinstance(c, SetDiskReplicas)]
    assert sets and other not in [r.host for r in sets[-1].replicas]
    assert actions


@pytest.mark.parametrize("reload", [False, True], ids=["restart", "restart-reload"])
def test_a_restarted_scheduler_keeps_every_copy_it_placed(reload: bool) -> None:
    kit = kit_of("fd-a", "fd-b")
    run(kit, "web", data_disks_mib=[512])
    before = {h: c for h, c in kit.applied.items()}
    kit.restart(reload=reload)
    kit.beat_all()
    for host, config in before.items():
        assert kit.sent_sets[host].digest == config.digest  # nothing dropped from any host


def test_a_vm_created_before_a_new_scheduler_knows_copy_hosts_is_placed_once_it_does() -> None:
    kit = kit_of("fd-a", "fd-b")
    run(kit, "before")
    kit.restart(reload=True)
    kit.beat("h1")  # only one host's replica set is known yet: no home for a second copy
    kit.create("after")
    assert kit.vm("after").state is VmState.PENDING
    for _ in range(4):  # h2 is known, the VM placed, its copies made, it starts and runs
        kit.beat_all()
        kit.advance(0.1)
    assert kit.vm("after").state is VmState.RUNNING, kit.vm("after").reason


def test_after_a_restart_a_host_running_replicated_vms_as_recorded_needs_no_full_report() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c")
    host = run(kit, "web", data_disks_mib=[512])
    report = InventoryReport()
    kit.beat(host, report)
    kit.beat(host, report)
    assert report.held != ""
    kit.t += 30.0  # the scheduler restarts: it holds no host's inventory
    kit.core.start(kit.now())
    [ack] = acks(kit.beat(host, report))
    assert ack.ack.inventory_digest == report.held != "", "its digest matched the records'"


def test_deleting_a_vm_drops_its_copies_from_every_host() -> None:
    kit = kit_of("fd-a", "fd-b")
    host = run(kit, "web")
    kit.mutate(Op.DELETE, VmRef(name="web"))
    kit.beat_all()
    kit.beat_all()
    assert kit.vm("web").state is VmState.DELETED
    assert all(not kit.sent_sets[h].replicas for h in ("h1", "h2")), host


# --------------------------------------------------------------------------- rebuilds


def test_a_running_vms_lost_copy_is_rebuilt_in_an_unused_fault_domain_and_joins_it() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c", storage={"rebuild_mib_per_s": 50.0})
    host = run(kit, "web")
    [other] = [h for h in kit.copies("web")[0] if h != host]
    [spare] = [h for h in kit.domains if h not in (host, other)]
    kill(kit, other)  # a copy holder dies; the VM keeps running on its host
    record = kit.vm("web")
    assert (record.state, record.host) == (VmState.RUNNING, host)
    assert kit.copies("web", CopyState.CURRENT) == [[host]]
    assert kit.copies("web", CopyState.JOINING) == [[spare]]
    assert any(r.disk_id == record.disks[0].disk_id for r in kit.sent_sets[spare].replicas)
    kit.beat(spare)  # made and ready: the VM's host is told to bring it in step
    sets = [c for c in kit.sent(SetDiskReplicas, host) if isinstance(c, SetDiskReplicas)]
    assert [r.host for r in sets[-1].joining] == [spare]
    assert [r.host for r in sets[-1].replicas] == [host]
    assert sets[-1].speed_mib_s == 50.0
    kit.beat(host)
    assert kit.copies("web", CopyState.JOINING) == [[spare]]  # not current before in step
    assert [(r.host, r.progress) for r in shown_copies(kit, "web")] == [(host, 0.0), (spare, 0.5)]
    kit.join("web")
    kit.beat(host)
    assert sorted(kit.copies("web", CopyState.CURRENT)[0]) == sorted([host, spare])
    assert kit.state.disks.short_of(2) == []


def test_a_stopped_vms_lost_copy_is_filled_from_a_current_one() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c")
    host = run(kit, "web")
    kit.mutate(Op.STOP, VmRef(name="web"))
    kit.beat_all()
    assert kit.vm("web").state is VmState.STOPPED
    [other] = [h for h in kit.copies("web")[0] if h != host]
    [spare] = [h for h in kit.domains if h not in (host, other)]
    kit.held_back[spare] = {d.disk_id for d in kit.vm("web").disks}  # copying takes a while
    kill(kit, other)
    assert kit.copies("web", CopyState.FILLING) == [[spare]]
    [spec] = [r for r in kit.sent_sets[spare].replicas if r.vm == "web"]
    assert spec.fill_from is not None and spec.fill_from.host == host
    assert kit.copies("web", CopyState.CURRENT) == [[host]]  # not current while copying
    kit.fill_progress[spare] = 0.4
    events = vm_events(kit.beat(spare))
    assert [(r.host, r.state, r.progress) for r in shown_copies(kit, "web")] == [
        (host, "current", 0.0),
        (spare, "filling", 0.4),
    ]
    [event] = [e for e in events if e.name == "web"]
    assert "being filled: 40%" in event.reason
    kit.held_back[spare] = set()
    kit.beat(spare)
    assert sorted(kit.copies("web", CopyState.CURRENT)[0]) == sorted([host, spare])


def shown_copies(kit: ReplicaKit, vm: str) -> list[ReplicaInfo]:
    """The copies of the VM's first disk as the API shows them, its host's first."""
    record = kit.vm(vm)
    return sorted(vm_info(record).disks[0].replicas, key=lambda r: r.host != record.host)


def test_rebuilds_onto_one_host_are_limited() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c", storage={"max_rebuilds_per_host": 1})
    for name in ("a", "b", "c"):
        kit.create(name, storage=DiskStorage.REPLICATED)
        kit.beat_all()
        kit.beat_all()
    kit.beat_all()
    for name in ("a", "b", "c"):
        kit.mutate(Op.STOP, VmRef(name=name))
    kit.beat_all()
    disks = {d.disk_id for name in ("a", "b", "c") for d in kit.vm(name).disks}
    for host in kit.domains:
        kit.held_back[host] = set(disks)  # every new copy takes a while
    victim = "h1"
    kill(kit, victim)
    making = kit.state.disks.making
    assert making and max(making.values()) <= 1
    assert len(kit.state.disks.short_of(2)) >= 2  # the others wait their turn


def test_stopped_then_started_a_replicated_vm_goes_where_a_copy_is_or_anywhere() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c")
    host = run(kit, "web")
    kit.mutate(Op.STOP, VmRef(name="web"))
    kit.beat_all()
    holders = kit.copies("web")[0]
    for holder in holders:
        kit.host_op(Op.CORDON, holder)
    kit.mutate(Op.START, VmRef(name="web"))
    record = kit.vm("web")
    [free] = [h for h in kit.domains if h not in holders]
    assert record.host == free, record.reason  # not pinned: the copies are reached over NBD
    kit.beat_all()
    kit.beat_all()
    assert kit.vm("web").state is VmState.RUNNING
    start = started(kit, "web")
    assert sorted(r.host for r in start.vm.disks[0].replicas) == sorted(holders)
    assert host in holders


def test_a_host_without_disk_room_takes_neither_the_vm_nor_a_copy() -> None:
    kit = ReplicaKit()
    kit.add_host("h1", "fd-a", capacity_mib=100)
    kit.add_host("h2", "fd-b", capacity_mib=10_000)
    kit.add_host("h3", "fd-c", capacity_mib=10_000)
    kit.create("web", storage=DiskStorage.REPLICATED, data_disks_mib=[2048])
    assert "h1" not in [h for hosts in kit.copies("web") for h in hosts]
    assert kit.vm("web").host != "h1"
    for host in ("h2", "h3"):
        assert kit.state.disks.used_mib[kit.host(host).host_id] == 1024 + 2048


def test_copies_that_do_not_fit_leave_the_vm_pending_with_the_reason() -> None:
    kit = ReplicaKit()
    kit.add_host("h1", "fd-a", capacity_mib=10_000)
    kit.add_host("h2", "fd-b", capacity_mib=500)
    kit.create("web", storage=DiskStorage.REPLICATED)
    record = kit.vm("web")
    assert record.state is VmState.PENDING
    assert "no room for 2 copies" in record.reason
    assert kit.state.disks.used_mib == {}


def test_a_replicated_vm_is_captured_from_a_current_copy_not_its_host() -> None:
    kit = kit_of("fd-a", "fd-b", "fd-c")
    run(kit, "web")
    kit.mutate(Op.STOP, VmRef(name="web"))
    kit.beat_all()
    holders = kit.copies("web")[0]
    for holder in holders:
        kit.host_op(Op.CORDON, holder)
    kit.mutate(Op.START, VmRef(name="web"))
    for _ in range(3):
        kit.beat_all()
    assert kit.vm("web").state is VmState.RUNNING and kit.vm("web").host not in holders
    kit.step(Mutation(Op.CAPTURE, CaptureVm(name="web", image="golden"), next(kit.tokens)))
    assert kit.state.images["golden"].capture_host in holders


def test_a_create_repeated_with_another_storage_kind_is_a_conflict() -> None:
    kit = kit_of("fd-a", "fd-b")
    kit.create("web", storage=DiskStorage.REPLICATED)
    assert kit.create("web", storage=DiskStorage.REPLICATED).error is None
    assert kit.create("web").error is None  # no kind asked for: the same VM
    reply = kit.create("web", storage=DiskStorage.HOST_LOCAL)
    assert reply.error is not None and reply.error.code is ErrorCode.CONFLICT
