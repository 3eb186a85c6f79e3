"""The core as a state machine: requests, heartbeats and time in; commands and events out."""

from __future__ import annotations

import pytest

from common import subjects
from common.fields import ErrorCode
from common.ids import VmName
from common.messages import (
    CreateVm,
    DeleteVm,
    HostEvent,
    ObservedState,
    ObservedVm,
    ResumeVm,
    StartVm,
    StopVm,
    VmRef,
    VmState,
)
from common.resources import Resources
from hostagent.report import InventoryReport
from scheduler.core.contract import Emit, InvalidJob, Mutation, Op, Reply
from scheduler.core.transitions import IllegalTransition
from tests.unit.scheduler.corekit import CoreKit, acks, commands, vm_events


def with_hosts(*hosts: str, **kw: object) -> CoreKit:
    kit = CoreKit(**kw)
    for i, host in enumerate(hosts):
        kit.heartbeat(host, fault_domain=f"fd-{i}")
    return kit


def test_create_places_and_sends_start_to_the_chosen_host() -> None:
    kit = with_hosts("h1")
    reply = kit.create("web-1", "Medium")
    assert reply.vm is not None and reply.vm.state is VmState.SCHEDULED
    assert reply.vm.host == "h1" and reply.vm.generation == 1
    assert reply.vm.cpu_milli == 2000 and reply.vm.mem_mib == 3584
    [cmd] = commands(kit.actions, "h1")
    assert isinstance(cmd, StartVm) and cmd.vm.name == "web-1" and cmd.generation == 1
    assert [e.state for e in vm_events(kit.actions)] == [VmState.PENDING, VmState.SCHEDULED]


def test_heartbeat_showing_the_vm_running_marks_it_running_and_acks() -> None:
    kit = with_hosts("h1")
    kit.create("web-1")
    actions = kit.heartbeat("h1", kit.running_on("h1"))
    assert kit.vm("web-1").state is VmState.RUNNING
    [ack] = acks(actions)
    assert ack.ack.fence_after_s == 4.0 and ack.ack.heartbeat_interval_s == 1.0
    assert commands(actions) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (CreateVm(name="a", size="Huge"), ErrorCode.UNKNOWN_SIZE),
        (CreateVm(name="a", size="A7"), ErrorCode.INSUFFICIENT_CAPACITY),
        (CreateVm(name="a", size="Small", region="elsewhere"), None),
    ],
    ids=["unknown-size", "bigger-than-any-host", "no-host-in-region-stays-pending"],
)
def test_create_errors_change_nothing(body: CreateVm, code: ErrorCode | None) -> None:
    kit = with_hosts("h1")  # 8 cores / 16 GiB: A7 (56 GiB) can never fit
    reply = kit.mutate(Op.CREATE, body)
    if code is None:
        assert reply.vm is not None and reply.vm.state is VmState.PENDING
        return
    assert reply.error is not None and reply.error.code is code
    assert kit.state.vms == {} and not any(isinstance(a, Emit) for a in kit.actions)


def test_unplaceable_vm_stays_pending_with_reasons_then_is_placed_when_capacity_appears() -> None:
    kit = with_hosts("h1", "h2")
    kit.create("big-1", "ExtraLarge")  # 8 cores: fills h1
    kit.create("big-2", "ExtraLarge")  # fills h2
    reply = kit.create("big-3", "ExtraLarge")
    assert reply.vm is not None and reply.vm.state is VmState.PENDING
    assert reply.vm.reason == "no host fits: insufficient_cpu: 2 hosts"
    kit.heartbeat("h3", fault_domain="fd-2")
    kit.advance(0.2)
    assert kit.vm("big-3").state is VmState.SCHEDULED
    assert kit.vm("big-3").host == "h3"


def test_pending_vm_fails_after_placement_timeout() -> None:
    kit = with_hosts("h1", placement_timeout_s=10.0)
    kit.create("a", "ExtraLarge")
    kit.create("b", "ExtraLarge")
    kit.heartbeat("h1", kit.running_on("h1"))
    kit.advance(5)
    kit.heartbeat("h1", kit.running_on("h1"))
    kit.advance(5.5)
    record = kit.vm("b")
    assert record.state is VmState.FAILED
    assert record.reason.startswith("placement timed out after 10s: no host fits")


def test_same_name_same_spec_is_idempotent_and_different_spec_conflicts() -> None:
    kit = with_hosts("h1")
    first = kit.create("a", "Small")
    again = kit.create("a", "Small")
    assert again.vm is not None and first.vm is not None
    assert again.vm.generation == first.vm.generation and len(kit.state.vms) == 1
    clash = kit.create("a", "Medium")
    assert clash.error is not None and clash.error.code is ErrorCode.CONFLICT


def test_repeated_request_id_returns_the_original_reply() -> None:
    kit = with_hosts("h1")
    first = kit.create("a", "Small", request_id="r-1")
    kit.heartbeat("h1", kit.running_on("h1"))
    again = kit.create("a", "Small", request_id="r-1")
    assert again == first  # the original answer (scheduled), not today's state (running)
    kit.mutate(Op.DELETE, VmRef(name="a", request_id="r-2"))
    assert kit.create("a", "Small", request_id="r-1") == first


def test_invalid_job_is_rejected_on_the_event_stream_and_acked() -> None:
    kit = with_hosts("h1")
    actions = kit.step(
        InvalidJob("stratus.jobs.vm.create", "j-1", ErrorCode.INVALID_REQUEST, "bad", 7)
    )
    assert Reply(7, None) in actions
    [emit] = [a for a in actions if isinstance(a, Emit)]
    assert subjects.of_event(emit.event) == "stratus.events.job.rejected"


def test_job_with_an_error_is_rejected_on_the_event_stream() -> None:
    kit = with_hosts("h1")
    job = Mutation(Op.CREATE, CreateVm(name="a", size="Nope"), 9, via_job=True, job_subject="s")
    actions = kit.step(job)
    assert [subjects.of_event(a.event) for a in actions if isinstance(a, Emit)] == [
        "stratus.events.job.rejected"
    ]


def test_stop_then_start_deallocates_and_places_again() -> None:
    kit = with_hosts("h1")
    kit.create("a", "Large")
    kit.heartbeat("h1", kit.running_on("h1"))
    reply = kit.mutate(Op.STOP, VmRef(name="a"))
    assert reply.vm is not None and reply.vm.state is VmState.STOPPING
    assert commands(kit.actions, "h1") == [StopVm(name="a", generation=1)]
    kit.heartbeat("h1", [])
    record = kit.vm("a")
    assert record.state is VmState.STOPPED and record.host is None
    assert kit.allocated("h1") == Resources()
    kit.mutate(Op.START, VmRef(name="a"))
    record = kit.vm("a")
    assert record.state is VmState.SCHEDULED and record.generation == 2


def test_delete_of_a_running_vm_destroys_it_then_records_deleted() -> None:
    kit = with_hosts("h1")
    kit.create("a")
    kit.heartbeat("h1", kit.running_on("h1"))
    kit.mutate(Op.DELETE, VmRef(name="a"))
    assert commands(kit.actions, "h1") == [DeleteVm(name="a", generation=1)]
    kit.heartbeat("h1", [])
    assert kit.vm("a").state is VmState.DELETED
    missing = kit.mutate(Op.STOP, VmRef(name="nope"))
    assert missing.error is not None and missing.error.code is ErrorCode.NOT_FOUND


def test_silent_host_is_declared_dead_and_its_vms_are_replaced_with_a_new_generation() -> None:
    kit = with_hosts("h1", "h2", "h3")
    for i in range(3):
        kit.create(f"vm-{i}", "Large")
    victim = kit.vm("vm-0").host
    assert victim is not None
    survivors = [h for h in ("h1", "h2", "h3") if h != victim]
    moved = [r.name for r in kit.state.vms.values() if r.host == victim]
    for _ in range(6):
        kit.advance(1.0)
        for host in survivors:
            kit.heartbeat(host, kit.running_on(host))
        assert kit.host(victim).up  # 6 s is not yet more than dead_after_s
    actions = kit.advance(0.5)
    assert not kit.host(victim).up
    assert any(isinstance(a, Emit) and isinstance(a.event, HostEvent) for a in actions)
    states = [e.state for e in vm_events(actions) if e.name == moved[0]]
    assert states[:3] == [VmState.LOST, VmState.PENDING, VmState.SCHEDULED]
    for name in moved:
        record = kit.vm(name)
        assert record.host in survivors and record.generation == 2


def test_host_coming_back_with_stale_vms_is_told_to_destroy_them_not_resume() -> None:
    kit = with_hosts("h1", "h2")
    kit.create("a", "Large")
    home = kit.vm("a").host
    assert home is not None
    other = "h2" if home == "h1" else "h1"
    kit.advance(3)
    kit.heartbeat(other, kit.running_on(other))
    kit.advance(3.5)
    assert kit.vm("a").host == other  # re-placed at generation 2
    paused = [
        ObservedVm(name="a", generation=1, state=ObservedState.PAUSED, cpu_milli=4000, mem_mib=7168)
    ]
    actions = kit.heartbeat(home, paused)
    assert commands(actions, home) == [DeleteVm(name="a", generation=1)]
    assert kit.host(home).up
    # Until the stale copy is gone, its capacity is held; then placement may use it again.
    kit.create("b", "ExtraLarge")
    assert kit.vm("b").state is VmState.PENDING
    kit.heartbeat(home, [])
    kit.advance(0.1)  # pending VMs are tried again on the next tick
    assert kit.vm("b").host == home


def test_fenced_vm_with_current_generation_is_resumed() -> None:
    kit = with_hosts("h1")
    kit.create("a")
    paused = [
        ObservedVm(name="a", generation=1, state=ObservedState.PAUSED, cpu_milli=1000, mem_mib=1792)
    ]
    actions = kit.heartbeat("h1", paused)
    assert commands(actions, "h1") == [ResumeVm(name="a", generation=1)]


def test_restart_grants_a_fresh_window() -> None:
    kit = with_hosts("h1")
    kit.create("a")
    kit.t += 100.0  # the scheduler was down for a long time
    kit.core.start(kit.now())
    kit.advance(5.0)
    assert kit.host("h1").up and kit.vm("a").host == "h1"


def test_failed_start_is_retried_elsewhere_then_fails_for_good() -> None:
    kit = with_hosts("h1", "h2", max_start_attempts=2)
    kit.create("a")
    first = kit.vm("a").host
    assert first is not None
    failed = ObservedVm(
        name="a",
        generation=1,
        state=ObservedState.FAILED,
        cpu_milli=1000,
        mem_mib=1792,
        reason="no memory",
        retryable=True,
    )
    actions = kit.heartbeat(first, [failed])
    assert DeleteVm(name="a", generation=1) in commands(actions, first)
    record = kit.vm("a")
    assert record.host not in (None, first) and record.generation == 2
    second = record.host
    assert second is not None
    failed2 = ObservedVm(
        name="a",
        generation=2,
        state=ObservedState.FAILED,
        cpu_milli=1000,
        mem_mib=1792,
        reason="no memory",
        retryable=True,
    )
    kit.heartbeat(second, [failed2])
    assert record.state is VmState.FAILED and "no memory" in record.reason


def test_lost_command_is_sent_again_after_the_retry_interval() -> None:
    kit = with_hosts("h1", command_retry_s=2.0)
    kit.create("a")
    assert commands(kit.heartbeat("h1", [])) == []  # just sent: not again yet
    kit.t += 2.5
    [cmd] = commands(kit.heartbeat("h1", []))
    assert isinstance(cmd, StartVm) and cmd.generation == 1


def test_the_memory_of_commands_sent_keeps_only_what_is_younger_than_the_retry() -> None:
    """The scheduler remembers each command sent only while a repeat would be suppressed: the
    start of a VM that runs is not held for good (it held a spec per VM, which the garbage
    collector walked at each full collection), and a repeat is still held back meanwhile."""
    kit = with_hosts("h1", "h2", command_retry_s=2.0)
    for i in range(4):
        kit.create(f"a-{i}")
    assert sum(len(by_vm) for by_vm in kit.core.carry.sent.values()) == 4
    kit.t += 1.0
    kit.create("b")
    assert commands(kit.heartbeat("h1", [])) == []  # the starts are young: not sent again
    kit.t += 1.5
    kit.create("c")  # a send forgets the starts sent 2.5 s ago, keeps b's (1.5 s ago)
    remembered = {name for by_vm in kit.core.carry.sent.values() for name in by_vm}
    assert remembered == {"b", "c"}
    again = {cmd.vm.name for cmd in commands(kit.heartbeat("h1", [])) if isinstance(cmd, StartVm)}
    assert again == {f"a-{i}" for i in range(4)} & set(kit.vms_on("h1"))


def test_old_heartbeat_is_acked_but_not_reconciled() -> None:
    kit = with_hosts("h1")
    kit.create("a")
    kit.heartbeat("h1", kit.running_on("h1"))
    kit.seqs["h1"] -= 5  # an old, overtaken report that shows nothing
    actions = kit.heartbeat("h1", [])
    assert acks(actions) and commands(actions) == []
    assert kit.vm("a").state is VmState.RUNNING


def test_availability_set_spreads_over_fault_domains() -> None:
    kit = with_hosts("h1", "h2", "h3")
    for i in range(3):
        kit.create(f"db-{i}", "Small", availability_set="db")
    hosts = {kit.vm(f"db-{i}").host for i in range(3)}
    assert hosts == {"h1", "h2", "h3"}


def test_recovery_is_rate_limited_per_target_host() -> None:
    kit = with_hosts("h1", "h2", recovery_per_host_per_tick=2)
    for i in range(4):
        kit.create(f"x-{i}", "ExtraSmall")
    victim = "h1" if kit.vms_on("h1") else "h2"
    survivor = "h2" if victim == "h1" else "h1"
    count = len(kit.vms_on(victim))
    assert count == 4
    kit.advance(3)
    kit.heartbeat(survivor, kit.running_on(survivor))
    actions = kit.advance(3.5)
    assert len(commands(actions, survivor)) == 2
    kit.advance(0.2)
    assert all(r.host == survivor for r in kit.state.vms.values())


def test_the_recovery_rate_limit_holds_across_a_scheduler_restart() -> None:
    kit = with_hosts("h1", "h2", recovery_per_host_per_tick=2)
    for i in range(6):
        kit.create(f"x-{i}", "ExtraSmall")
    victim = "h1" if kit.vms_on("h1") else "h2"
    survivor = "h2" if victim == "h1" else "h1"
    assert len(kit.vms_on(victim)) == 6
    kit.advance(3)
    kit.heartbeat(survivor, kit.running_on(survivor))
    assert len(commands(kit.advance(3.5), survivor)) == 2  # victim declared dead
    kit.restart(reload=True)
    kit.heartbeat(survivor, kit.running_on(survivor))
    actions = kit.advance(0.2)
    assert len(commands(actions, survivor)) == 2, "a restart must not lift the rate limit"
    kit.heartbeat(survivor, kit.running_on(survivor))
    kit.advance(0.2)
    assert all(r.host == survivor for r in kit.state.vms.values())
    assert not any(r.recovering for r in kit.state.vms.values() if r.state is VmState.RUNNING)


def test_a_vm_state_change_outside_the_table_is_refused() -> None:
    kit = with_hosts("h1")
    kit.create("a")
    record = kit.vm(VmName("a"))
    ctx = kit.core.context(kit.now())
    with pytest.raises(IllegalTransition, match="scheduled -> stopped"):
        ctx.change_vm(record, state=VmState.STOPPED)
    assert record.state is VmState.SCHEDULED


def test_after_a_restart_a_host_running_what_the_records_say_needs_no_full_report() -> None:
    kit = with_hosts("h1", "h2")
    kit.create("a", "ExtraLarge")
    kit.create("b", "ExtraLarge")  # one per host
    hosts = {name: kit.vm(name).host for name in ("a", "b")}
    assert hosts["a"] != hosts["b"]
    reports = {h: InventoryReport() for h in ("h1", "h2")}
    for i, host in enumerate(("h1", "h2")):
        kit.heartbeat(host, kit.running_on(host), fault_domain=f"fd-{i}", report=reports[host])
    assert all(vm.state is VmState.RUNNING for vm in kit.state.vms.values())
    kit.t += 30.0  # the scheduler restarts: it holds no host's inventory
    kit.core.start(kit.now())
    keeps, loses = hosts["a"], hosts["b"]
    assert keeps is not None and loses is not None
    i = ("h1", "h2").index(keeps)
    actions = kit.heartbeat(
        keeps, kit.running_on(keeps), fault_domain=f"fd-{i}", report=reports[keeps]
    )
    assert len(acks(actions)) == 1  # its digest matched what the records predict
    assert acks(actions)[0].ack.inventory_digest != ""
    # The other host lost its VM while the scheduler was away: a changed inventory goes in full.
    actions = kit.heartbeat(loses, [], fault_domain=f"fd-{1 - i}", report=reports[loses])
    assert [type(c) for c in commands(actions, loses)] == [StartVm]
    assert kit.vm("b").state is VmState.STARTING


def test_size_names_are_case_insensitive_and_a_repeat_in_another_case_is_the_same_vm() -> None:
    kit = with_hosts("h1")
    first = kit.create("a", "small")
    assert first.vm is not None and first.vm.size == "Small"
    again = kit.create("a", "SMALL")
    assert again.error is None and again.vm is not None
    assert again.vm.generation == first.vm.generation and len(kit.state.vms) == 1


def test_a_start_that_failed_once_does_not_bar_that_host_after_the_vm_ran() -> None:
    """A failed start steers the next attempts away from its host; once the VM runs, that
    host is fit again (a full disk is over by then): a later move may go back there."""
    kit = with_hosts("h1", "h2")
    kit.create("a")
    first = kit.vm("a").host
    assert first is not None
    failed = ObservedVm(
        name="a",
        generation=1,
        state=ObservedState.FAILED,
        cpu_milli=1000,
        mem_mib=1792,
        reason="No space left on device",
        retryable=True,
    )
    kit.heartbeat(first, [failed])
    second = kit.vm("a").host
    assert second not in (None, first)
    kit.heartbeat(first, [])
    kit.heartbeat(second, kit.running_on(second))
    assert kit.vm("a").state is VmState.RUNNING
    for _ in range(8):  # the host it runs on goes silent and is declared dead
        kit.advance(1.0)
        kit.heartbeat(first, [])
    record = kit.vm("a")
    assert not kit.host(second).up
    assert record.host == first and record.state is VmState.SCHEDULED, record.reason
