"""The observer catches what it is there to catch (pure: no cluster, no root needed)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench.chaos import result_of
from common.ids import HostId
from common.messages import DiskInfo, DiskKind, HostEvent, HostState, VmEvent, VmInfo, VmState
from common.network_messages import AddEndpoint, NicInfo, NicRequest
from common.replica_messages import ReplicaInfo
from common.spec_messages import DiskStorage
from hostagent.drivers.fakeledger import FileLedger, read_acknowledged, read_copies
from rigs.chaos.campaign import Report
from rigs.chaos.consolewatch import Copy, spans, two_running_copies
from rigs.chaos.faults import DEAD_AFTER_S, ON_A_HOST, WEIGHTS, Fault, Kind, Violation, plan
from rigs.chaos.load import Acked, Op
from rigs.chaos.observer import (
    Replay,
    Row,
    acked_outcomes,
    address_violations,
    convergence_problems,
    destroyed_during_nats_outages,
    disk_content_violations,
    disks_given_up,
    duplicates_refused,
    healthy_hosts_declared_dead,
    mistakes_stood_by,
    network_problems,
)
from scheduler.core.contract import Op as CoreOp
from scheduler.core.networks import vnet_info
from scheduler.core.views import vm_info
from tests.unit.scheduler.corekit import CoreKit
from tests.unit.scheduler.netagents import HeldNets

SIZES = {"a": "Small", "b": "Small"}


def fault(kind: Kind, host: str | None, start: float, end: float) -> Fault:
    return Fault(0, kind, host, end - start, 0.0, start=start, end=end)


def replay(rows: list[Row], faults: list[Fault], sizes: dict[str, str] = SIZES) -> Replay:
    r = Replay()
    r.run(rows, faults, sizes)
    return r


def test_a_vm_running_on_two_hosts_is_caught() -> None:
    rows = [Row(1.0, "h1", "a", 1, "start"), Row(1.1, "h1", "a", 1, "running")]
    rows += [Row(5.0, "h2", "a", 2, "start"), Row(5.1, "h2", "a", 2, "running")]
    assert [v.kind for v in replay(rows, []).violations] == ["two_copies"]


def test_pause_kill_and_freeze_end_execution() -> None:
    base = [Row(1.0, "h1", "a", 1, "start"), Row(1.1, "h1", "a", 1, "running")]
    moved = [Row(5.0, "h2", "a", 2, "start"), Row(5.1, "h2", "a", 2, "running")]
    paused = [*base, Row(2.0, "h1", "a", 1, "pause"), *moved]
    assert replay(paused, []).violations == []
    assert replay(base + moved, [fault(Kind.AGENT_KILL, "h1", 3.0, 4.0)]).violations == []
    woken = [*base, Row(4.2, "h1", "a", 1, "pause"), *moved]
    frozen = replay(woken, [fault(Kind.AGENT_STOP_LONG, "h1", 3.0, 4.0)])
    assert frozen.violations == []
    # Thawed without pausing its stale copy: two copies once the thaw grace has passed.
    late = replay(
        [*base, Row(4.0, "h2", "a", 2, "running")], [fault(Kind.AGENT_STOP_LONG, "h1", 3.0, 3.5)]
    )
    assert [v.kind for v in late.violations] == ["two_copies"]
    # ...unless the agent paused it on waking up.
    woke = [*base, Row(3.6, "h1", "a", 1, "pause"), Row(4.0, "h2", "a", 2, "running")]
    assert replay(woke, [fault(Kind.AGENT_STOP_LONG, "h1", 3.0, 3.5)]).violations == []


def test_held_allocations_beyond_capacity_are_caught() -> None:
    sizes = {f"v{i}": "Small" for i in range(10)}  # 1 core each on an 8-core host
    rows = [Row(float(i), "h1", f"v{i}", 1, "start") for i in range(10)]
    assert [v.kind for v in replay(rows, [], sizes).violations] == ["over_capacity"] * 2
    freed = [*rows[:8], Row(7.5, "h1", "v0", 1, "destroy"), *rows[8:9]]
    assert replay(freed, [], sizes).violations == []


def host_down(host: str, t: float) -> HostEvent:
    return HostEvent(seq=1, time=datetime.fromtimestamp(t, UTC), host_id=host, state=HostState.DOWN)


def test_a_host_declared_dead_without_an_agent_side_fault_is_caught() -> None:
    faults = [fault(Kind.PARTITION_BOTH, "h1", 10.0, 12.0), fault(Kind.NATS_KILL, None, 20.0, 23.0)]
    assert healthy_hosts_declared_dead([host_down("h1", 11.9)], faults) == []
    found = healthy_hosts_declared_dead([host_down("h2", 11.9), host_down("h1", 22.0)], faults)
    assert [v.detail.split()[1] for v in found] == ["host=h2", "host=h1"]


def vm(name: str, state: VmState, host: str | None = "h1", generation: int = 1) -> VmInfo:
    now = datetime.now(UTC)
    return VmInfo(
        name=name,
        size="Small",
        cpu_milli=1000,
        mem_mib=1792,
        image="tiny",
        region=None,
        availability_set=None,
        state=state,
        host=host,
        generation=generation,
        reason="",
        created_at=now,
        updated_at=now,
    )


def test_acknowledged_requests_must_reach_their_final_state() -> None:
    acked = [Acked("r1", "a", Op.CREATE_API, 1.0, 1), Acked("r2", "b", Op.CREATE_JOB, 1.0, 2)]
    acked += [Acked("r3", "c", Op.CREATE_API, 1.0, 1), Acked("r4", "c", Op.DELETE, 2.0, 1)]
    good = {"a": vm("a", VmState.RUNNING), "b": vm("b", VmState.RUNNING)}
    assert acked_outcomes(acked, good, []) == []
    bad = {"a": vm("a", VmState.PENDING), "c": vm("c", VmState.RUNNING)}
    kinds = sorted(v.kind for v in acked_outcomes(acked, bad, []))
    assert kinds == ["acked_create_not_running", "acked_create_vanished", "acked_delete_not_gone"]


def test_convergence_wants_one_copy_at_the_current_generation_and_no_orphans() -> None:
    rows = [Row(1.0, "h1", "a", 1, "start"), Row(1.1, "h1", "a", 1, "running")]
    assert convergence_problems(rows, [], {"a": vm("a", VmState.RUNNING)}) == []
    stale = [*rows, Row(2.0, "h1", "a", 1, "pause")]
    stale += [Row(3.0, "h2", "a", 2, "start"), Row(3.1, "h2", "a", 2, "running")]
    problems = convergence_problems(stale, [], {"a": vm("a", VmState.RUNNING, "h2", 2)})
    assert problems == ["orphan a generation 1 on h1"]


def test_a_vm_removed_while_nats_is_down_is_caught() -> None:
    outage = [fault(Kind.NATS_KILL, None, 10.0, 14.0)]
    rows = [Row(12.0, "h1", "a", 1, "pause"), Row(15.0, "h1", "b", 1, "destroy")]
    assert destroyed_during_nats_outages(rows, outage) == []
    found = destroyed_during_nats_outages([Row(13.0, "h1", "a", 1, "destroy")], outage)
    assert [v.kind for v in found] == ["removed_during_nats_outage"]
    # A delete the scheduler acknowledged before the outage may land during it; one acked
    # only after the outage began may not (no agent could have heard it).
    before = [Acked("r1", "a", Op.DELETE, acked_at=9.5, attempts=1)]
    assert destroyed_during_nats_outages([Row(13.0, "h1", "a", 1, "destroy")], outage, before) == []
    after = [Acked("r1", "a", Op.DELETE, acked_at=11.0, attempts=1)]
    found = destroyed_during_nats_outages([Row(13.0, "h1", "a", 1, "destroy")], outage, after)
    assert [v.kind for v in found] == ["removed_during_nats_outage"]
    # Sent before the outage, its reply lost with nats-server, acknowledged to a retry after it.
    retried = [Acked("r1", "a", Op.DELETE, acked_at=15.0, attempts=2, sent_at=9.9)]
    late_destroy = [Row(13.0, "h1", "a", 1, "destroy")]
    assert destroyed_during_nats_outages(late_destroy, outage, retried) == []
    sent_late = [Acked("r1", "a", Op.DELETE, acked_at=15.0, attempts=2, sent_at=11.0)]
    found = destroyed_during_nats_outages([Row(13.0, "h1", "a", 1, "destroy")], outage, sent_late)
    assert [v.kind for v in found] == ["removed_during_nats_outage"]


def vm_event(t: float, state: VmState, generation: int, host: str | None) -> VmEvent:
    when = datetime.fromtimestamp(t, UTC)
    return VmEvent(seq=0, time=when, name="a", state=state, host=host, generation=generation)


def test_a_disk_given_up_is_a_violation_a_vm_waiting_for_one_is_not() -> None:
    """The campaign keeps every host's disks: a VM failed for its every copy lost is one the
    scheduler destroyed by mistake; one waiting for a copy's host to come back is not."""
    waiting = vm_event(1.0, VmState.PENDING, 2, None)
    waiting.reason = "waiting for a copy of disk a-os: every host holding one is down (h1)"
    failed = vm_event(2.0, VmState.FAILED, 2, None)
    failed.reason = "every replica of disk a-os lost"
    stopped_earlier = vm_event(3.0, VmState.FAILED, 3, None)
    stopped_earlier.reason = "start failed on h2: no room"
    found = disks_given_up([waiting, stopped_earlier, host_down("h1", 1.5), failed])
    assert [(v.kind, v.detail.split()[1]) for v in found] == [("disk_given_up", "vm=a")]


def test_removing_a_copy_the_scheduler_gave_up_before_nats_went_silent_is_no_violation() -> None:
    """h1 was cut off and declared dead; a runs again on h2 at generation 2; the DeleteVm of
    the old copy reaches h1 late, while nats-server is frozen."""
    frozen = [fault(Kind.NATS_STOP_LONG, None, 10.0, 14.0)]
    old_copy = [Row(12.0, "h1", "a", 1, "destroy")]
    moved = [vm_event(9.5, VmState.LOST, 1, "h1"), vm_event(9.5, VmState.PENDING, 2, None)]
    assert destroyed_during_nats_outages(old_copy, frozen, (), moved) == []
    # Given up only after the outage began: nobody could have told h1.
    moved_late = [vm_event(10.5, VmState.LOST, 1, "h1"), vm_event(10.5, VmState.PENDING, 2, None)]
    found = destroyed_during_nats_outages(old_copy, frozen, (), moved_late)
    assert [v.kind for v in found] == ["removed_during_nats_outage"]
    # The current copy: a newer generation says nothing about it.
    current = [Row(12.0, "h2", "a", 2, "destroy")]
    found = destroyed_during_nats_outages(current, frozen, (), moved)
    assert [v.kind for v in found] == ["removed_during_nats_outage"]
    # Stopped before the outage: its stop may land during it.
    stopping = [vm_event(9.0, VmState.STOPPING, 2, "h2")]
    late_stop = [Row(12.0, "h2", "a", 2, "stop")]
    assert destroyed_during_nats_outages(late_stop, frozen, (), moved + stopping) == []


def test_a_duplicate_that_was_not_refused_or_executed_is_a_violation(tmp_path: Path) -> None:
    refused = fault(Kind.DUPLICATE_HOST_ID, "h1", 10.0, 14.0)
    refused.duplicate_exit = 3
    lingering = fault(Kind.DUPLICATE_HOST_ID, "h2", 20.0, 24.0)
    lingering.index, lingering.duplicate_exit = 1, None
    executed = fault(Kind.DUPLICATE_HOST_ID, "h3", 30.0, 34.0)
    executed.index, executed.duplicate_exit = 2, 3
    audit = tmp_path / "2" / "h3" / "executions.jsonl"
    audit.parent.mkdir(parents=True)
    audit.write_text('{"t": 31.0, "host": "h3", "vm": "a", "gen": 1, "event": "start"}\n')
    (tmp_path / "0" / "h1").mkdir(parents=True)
    (tmp_path / "0" / "h1" / "executions.jsonl").write_text("")
    found = duplicates_refused([refused, lingering, executed], lambda i: tmp_path / str(i))
    assert sorted(v.kind for v in found) == ["duplicate_executed", "duplicate_not_refused"]


def nic_event(seq: int, name: str, ip: str, state: VmState = VmState.RUNNING) -> VmEvent:
    nic = NicInfo(vnet="net", ip=ip, mac="52:54:00:00:00:01", prefix_len=16, gateway="10.14.0.1")
    return VmEvent(
        seq=seq,
        time=datetime.now(UTC),
        name=name,
        state=state,
        host="h1",
        generation=seq,
        nics=[nic] if ip else [],
    )


def test_an_address_held_twice_or_changed_is_caught_and_a_released_one_may_be_reused() -> None:
    fine = [
        nic_event(1, "a", "10.14.0.2"),
        nic_event(2, "a", "10.14.0.2"),  # another generation, the same address
        nic_event(3, "a", "", VmState.DELETED),
        nic_event(4, "b", "10.14.0.2"),  # released, reused
    ]
    assert address_violations(fine) == []
    shared = [nic_event(1, "a", "10.14.0.2"), nic_event(2, "b", "10.14.0.2")]
    assert [v.kind for v in address_violations(shared)] == ["address_shared"]
    moved = [nic_event(1, "a", "10.14.0.2"), nic_event(2, "a", "10.14.0.3")]
    assert [v.kind for v in address_violations(moved)] == ["address_changed"]


def test_addresses_are_judged_in_the_schedulers_order_not_the_streams() -> None:
    """a's first events were lost with a stopping nats-server and published again 5 s later,
    after a's deletion and b's creation with the address a had released."""
    republished = [
        nic_event(3, "a", "", VmState.DELETED),
        nic_event(4, "b", "10.14.0.6"),
        nic_event(1, "a", "10.14.0.6"),
        nic_event(2, "a", "10.14.0.6"),
    ]
    assert address_violations(republished) == []
    shared = [nic_event(2, "b", "10.14.0.6"), nic_event(1, "a", "10.14.0.6")]
    assert [v.kind for v in address_violations(shared)] == ["address_shared"]


def test_a_vm_removed_while_nats_is_frozen_is_caught() -> None:
    frozen = [fault(Kind.NATS_STOP_LONG, None, 10.0, 14.0)]
    found = destroyed_during_nats_outages([Row(13.0, "h1", "a", 1, "stop")], frozen)
    assert [v.kind for v in found] == ["removed_during_nats_outage"]


def test_stalls_of_nats_or_of_the_scheduler_excuse_no_host_declared_dead() -> None:
    stalls = [
        fault(Kind.NATS_STOP_LONG, None, 10.0, 14.0),
        fault(Kind.SCHEDULER_STOP_LONG, None, 20.0, 24.0),
        fault(Kind.LEADER_KILL, None, 30.0, 32.0),
    ]
    downs = [host_down("h1", 13.0), host_down("h2", 25.0), host_down("h3", 31.0)]
    found = healthy_hosts_declared_dead(downs, stalls)
    assert [v.kind for v in found] == ["healthy_host_declared_dead"] * 3


def test_a_mistaken_scheduler_must_stand_by_and_never_lead(tmp_path: Path) -> None:
    faults = [fault(Kind.SECOND_SCHEDULER, None, 1.0, 5.0) for _ in range(3)]
    for index, f in enumerate(faults):
        f.index = index
    logs = {
        0: "scheduler standby node=a\n",
        1: "scheduler standby node=b\nleader lease won\nscheduler leading epoch=9\n",
        2: "store loaded\n",
    }
    for index, text in logs.items():
        (tmp_path / f"{index}.log").write_text(text)
    found = mistakes_stood_by(faults, lambda i: tmp_path / f"{i}.log")
    assert [v.kind for v in found] == ["mistaken_scheduler_led", "mistaken_scheduler_not_standby"]


def test_a_ci_sized_plan_tries_every_kind_and_the_same_seed_gives_the_same_plan() -> None:
    hosts = ["h1", "h2", "h3", "h4"]
    first = plan(random.Random(6), 50, hosts)
    assert {f.kind for f in first} == set(WEIGHTS)
    again = plan(random.Random(6), 50, hosts)
    assert [(f.kind, f.host, f.hold_s) for f in first] == [
        (f.kind, f.host, f.hold_s) for f in again
    ]
    for f in first:
        assert (f.host is not None) == (f.kind in ON_A_HOST)
        if f.kind in (
            Kind.NATS_STOP_LONG,
            Kind.SCHEDULER_STOP_LONG,
            Kind.SCHEDULER_STARVED,
            Kind.AGENT_STOP_LONG,
        ):
            assert f.hold_s > DEAD_AFTER_S
        if f.kind in (Kind.NATS_STOP_SHORT, Kind.SCHEDULER_STOP_SHORT):
            assert f.hold_s < DEAD_AFTER_S


def test_console_ticks_of_two_processes_of_one_vm_at_once_are_two_executing_copies() -> None:
    old, new = Copy("a", "h1", 10), Copy("a", "h2", 20)
    handover = {old: [1.0, 1.25, 1.5, 1.75], new: [6.0, 6.25, 6.5]}
    assert two_running_copies(handover) == []
    assert spans([1.0, 1.25, 1.5, 4.0, 4.25]) == [(1.0, 1.5), (4.0, 4.25)]  # paused between
    both = {old: [1.0, 1.25, 1.5, 6.1, 6.35], new: [6.0, 6.25, 6.5]}  # the old one resumed
    assert [v.kind for v in two_running_copies(both)] == ["two_copies_executing"]
    other_vm = {old: [1.0, 1.25], Copy("b", "h2", 30): [1.0, 1.25]}
    assert two_running_copies(other_vm) == []


def test_the_long_run_reports_both_parts_and_every_violation() -> None:
    fake = Report(6, faults=[fault(Kind.AGENT_KILL, "h1", 1.0, 2.0)], duration_s=10.0)
    qemu = Report(6, faults=[fault(Kind.DISK_FULL, "h2", 1.0, 4.0)], duration_s=5.0)
    qemu.violations.append(Violation("two_copies_executing", "vm=a"))
    result = result_of(6, {"fake": fake, "qemu": qemu}, "replay")
    assert result["faults"] == 2
    assert result["faults_by_kind"] == {"agent_disk_full": 1, "agent_kill": 1}
    assert result["violations_by_kind"] == {"two_copies_executing": 1}
    assert result["parts"]["qemu"]["violations"] == 1 and result["duration_s"] == 15.0


def on_disks(info: VmInfo, **copies: str) -> VmInfo:
    """``info`` with a replicated OS disk ``<name>-os`` whose copies are ``host=state``."""
    replicas = [ReplicaInfo(host=host, state=state) for host, state in copies.items()]
    disk = DiskInfo(
        disk_id=f"{info.name}-os", kind=DiskKind.OS, size_mib=0,
        storage=DiskStorage.REPLICATED, replicas=replicas,
    )  # fmt: skip
    return msgspec.structs.replace(info, disks=[disk])


def test_a_current_copy_missing_acknowledged_writes_is_caught(tmp_path: Path) -> None:
    """The writes of every run of the VM count (here: 3 on h1, then 2 on h3 after a failover
    from h1's copy); the copy on h2 was not written to since, yet the scheduler counts it."""
    h1, h3 = FileLedger(root=tmp_path, host_id="h1"), FileLedger(root=tmp_path, host_id="h3")
    for host in ("h1", "h2"):
        h1.made("a-os", host)
    for _ in range(3):
        assert h1.wrote("a-os", "h1") and h1.wrote("a-os", "h2")
        h1.acknowledged("a-os")
    h3.made("a-os", "h3", copied_from="h1")
    for _ in range(2):
        assert h3.wrote("a-os", "h1") and h3.wrote("a-os", "h3")
        h3.acknowledged("a-os")
    acked, copies = read_acknowledged(tmp_path), read_copies(tmp_path)
    assert acked == {"a-os": 5}
    good = {"a": on_disks(vm("a", VmState.RUNNING, "h3"), h3="current", h1="current")}
    assert disk_content_violations(good, acked, copies, good) == []
    joining = {"a": on_disks(vm("a", VmState.RUNNING, "h3"), h3="current", h2="joining")}
    assert disk_content_violations(joining, acked, copies, joining) == []
    stale = {"a": on_disks(vm("a", VmState.RUNNING, "h3"), h3="current", h2="current")}
    [found] = disk_content_violations(stale, acked, copies, stale)
    detail = "vm=a disk=a-os copy on h2 holds 3 writes, 5 acknowledged"
    assert found == Violation("disk_copy_behind", detail)


def test_a_copy_dropped_while_the_observer_read_is_not_judged_but_a_lost_disk_is() -> None:
    acked, copies = {"a-os": 5}, {"a-os": {"h3": 5}}
    before = {"a": on_disks(vm("a", VmState.RUNNING, "h3"), h3="current", h2="current")}
    after = {"a": on_disks(vm("a", VmState.RUNNING, "h3"), h3="current")}
    assert disk_content_violations(before, acked, copies, after) == []
    [found] = disk_content_violations(before, acked, copies, before)
    assert found.detail == "vm=a disk=a-os copy on h2 is missing, 5 acknowledged"
    lost = {"a": on_disks(vm("a", VmState.FAILED, "h3"), h3="filling")}
    assert [v.kind for v in disk_content_violations(lost, acked, copies, lost)] == [
        "disk_copies_lost"
    ]
    deleted = {"a": on_disks(vm("a", VmState.DELETED, "h3"), h2="current")}
    assert disk_content_violations(deleted, acked, copies, deleted) == []


def test_a_host_whose_agent_reports_another_network_digest_is_caught() -> None:
    """The observer computes each host's network configuration from the final state the API
    shows, on its own: it agrees with the digests agents reach by applying what the scheduler
    sent them, and names a host whose agent holds anything else."""
    kit = CoreKit()
    addresses = {"h1": "192.0.2.1", "h2": "192.0.2.2"}
    held = HeldNets()
    for host, address in addresses.items():
        kit.heartbeat(host, underlay_ip=address)
    kit.vnet("front", "10.1.0.0/24")
    for name in ("a", "b", "c", "d"):
        kit.create(name, "Large", nics=[NicRequest(vnet="front")])  # two per host
        held.take(kit.actions)
    kit.mutate(CoreOp.ENDPOINT_ADD, AddEndpoint(vm="a", vm_port=22))
    held.take(kit.actions)
    held.take(kit.advance(0.5))  # the peers, at a tick
    vms = {str(name): vm_info(record) for name, record in kit.state.vms.items()}
    hosts = [kit.core.host_info(HostId(h), kit.now()) for h in addresses]
    vnets = [vnet_info(kit.state, record) for record in kit.state.vnets.values()]
    reported = {host: held.digest(host) for host in addresses}
    assert all(reported.values())
    assert network_problems(vms, vnets, hosts, reported) == []
    reported["h2"] = reported["h1"]
    [problem] = network_problems(vms, vnets, hosts, reported)
    assert problem.startswith("h2 holds network digest")


def test_a_create_whose_delete_was_sent_may_be_gone_though_the_delete_was_never_acked() -> None:
    """A delete carried out whose answer a leader change lost: the VM is gone, as asked."""
    acked = [Acked("r1", "a", Op.CREATE_JOB, 1.0, 1)]
    assert [v.kind for v in acked_outcomes(acked, {}, [])] == ["acked_create_vanished"]
    assert acked_outcomes(acked, {}, [], delete_sent={"a"}) == []
