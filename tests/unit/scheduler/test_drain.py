"""Cordon, uncordon and drain in the pure core: requests, heartbeats and time in; commands out.

The drains here move VMs by stop and start (``--cold``); test_migrations_drain.py has the live
ones."""

from __future__ import annotations

import pytest

from common import subjects
from common.fields import ErrorCode
from common.messages import (
    HostEvent,
    HostRef,
    HostReply,
    ObservedVm,
    StartVm,
    StopVm,
    VmRef,
    VmState,
)
from common.resources import Resources
from scheduler.core.contract import Emit, Mutation, Op, Reply
from tests.unit.scheduler.corekit import CoreKit, commands

SMALL_HOST = Resources(2000, 4096)


def host_op(kit: CoreKit, op: Op, host: str, *, cold: bool = False, **kw: object) -> HostReply:
    token = next(kit.tokens)
    actions = kit.step(Mutation(op, HostRef(host_id=host, cold=cold), token, **kw))  # type: ignore[arg-type]
    [reply] = [a.body for a in actions if isinstance(a, Reply) and a.token == token]
    assert isinstance(reply, HostReply)
    return reply


def host_events(kit: CoreKit) -> list[HostEvent]:
    return [a.event for a in kit.actions if isinstance(a, Emit) and isinstance(a.event, HostEvent)]


def agent_report(kit: CoreKit, host: str) -> list[ObservedVm]:
    """What an agent that carries out every command at once reports: the VMs assigned to it,
    running, except those it was told to stop (gone)."""
    return [
        vm
        for vm in kit.running_on(host)
        if kit.vm(vm.name).state not in (VmState.STOPPING, VmState.DELETING)
    ]


def cluster(*hosts: str, **config: object) -> CoreKit:
    kit = CoreKit(**config)
    for i, host in enumerate(hosts):
        kit.heartbeat(host, fault_domain=f"fd-{i}")
    return kit


def fill(kit: CoreKit, host: str, count: int, size: str = "Small") -> list[str]:
    """Create ``count`` VMs on ``host`` (the others cordoned meanwhile), running."""
    others = [h for h in kit.state.hosts if h != host]
    for other in others:
        host_op(kit, Op.CORDON, other)
    names = [f"{host}-vm-{i}" for i in range(count)]
    for name in names:
        kit.create(name, size)
    for other in others:
        host_op(kit, Op.UNCORDON, other)
    kit.heartbeat(host, kit.running_on(host))
    assert all(kit.vm(n).host == host for n in names)
    return names


def test_cordon_stops_new_placements_and_uncordon_lets_them_in_again() -> None:
    kit = cluster("h1", "h2")
    reply = host_op(kit, Op.CORDON, "h1")
    assert reply.host is not None and reply.host.cordoned and not reply.host.draining
    assert [e.reason for e in host_events(kit)] == ["cordoned"]
    kit.create("a")
    assert kit.vm("a").host == "h2"
    host_op(kit, Op.CORDON, "h2")
    pending = kit.create("b")
    assert pending.vm is not None and pending.vm.state is VmState.PENDING
    assert pending.vm.reason == "no host fits: host_cordoned: 2 hosts"
    kit.heartbeat("h1")  # heartbeats keep the cordon
    assert kit.host("h1").cordoned
    host_op(kit, Op.UNCORDON, "h1")
    kit.advance(0.2)
    assert kit.vm("b").host == "h1"


def test_repeated_cordon_changes_nothing_and_unknown_host_is_not_found() -> None:
    kit = cluster("h1", "h2")
    host_op(kit, Op.CORDON, "h1")
    again = host_op(kit, Op.CORDON, "h1")
    assert again.host is not None and again.host.cordoned
    assert host_events(kit) == [] and not kit.state.dirty_hosts
    for op in (Op.CORDON, Op.UNCORDON, Op.DRAIN):
        missing = host_op(kit, op, "nope")
        assert missing.error is not None and missing.error.code is ErrorCode.NOT_FOUND


def test_drain_moves_every_vm_elsewhere_a_few_at_a_time_with_a_new_generation() -> None:
    kit = cluster("h1", "h2", "h3", drain_parallelism=2)
    names = fill(kit, "h1", 6)
    reply = host_op(kit, Op.DRAIN, "h1", cold=True)
    assert reply.host is not None and reply.host.draining and reply.host.cordoned
    assert reply.host.drain_remaining == 6
    stops = commands(kit.actions, "h1")
    assert stops == [StopVm(name=n, generation=1) for n in names[:2]]
    progress: list[int] = []
    for _ in range(30):
        on_the_move = [r for r in kit.state.vms.values() if r.state is not VmState.RUNNING]
        assert len(on_the_move) <= 2
        for host in ("h1", "h2", "h3"):
            kit.heartbeat(host, agent_report(kit, host))
        kit.advance(0.2)
        progress += [e.drain_remaining for e in host_events(kit) if e.draining]
        if not kit.host("h1").draining:
            break
    h1 = kit.host("h1")
    assert h1.cordoned and not h1.draining and not kit.vms_on("h1")
    assert [e.reason for e in host_events(kit)] == ["drain complete"]
    for name in names:
        record = kit.vm(name)
        assert record.state is VmState.RUNNING and record.host in ("h2", "h3")
        assert record.generation == 2 and record.drained_from is None
    assert progress == sorted(progress, reverse=True) and progress[-1] < 6


def test_vm_moves_stop_first_then_start_elsewhere() -> None:
    kit = cluster("h1", "h2")
    [name] = fill(kit, "h1", 1)
    host_op(kit, Op.DRAIN, "h1", cold=True)
    record = kit.vm(name)
    assert record.state is VmState.STOPPING and record.host == "h1"
    assert commands(kit.actions, "h2") == []  # nothing starts before the old copy is gone
    kit.heartbeat("h1", kit.running_on("h1"))  # not stopped yet: it stays put
    assert record.host == "h1"
    actions = kit.heartbeat("h1", [])
    record = kit.vm(name)
    assert record.state is VmState.SCHEDULED and record.host == "h2" and record.generation == 2
    assert [c.generation for c in commands(actions, "h2") if isinstance(c, StartVm)] == [2]


@pytest.mark.parametrize(
    ("hosts", "vms", "other_capacity", "why"),
    [
        (("h1",), 2, None, "2 of its 2 vms would fit on no other host (first: h1-vm-0: no hosts)"),
        (("h1", "h2"), 4, SMALL_HOST, "2 of its 4 vms would fit on no other host"),
    ],
    ids=["last-host", "others-too-small"],
)
def test_drain_without_room_elsewhere_fails_up_front_and_changes_nothing(
    hosts: tuple[str, ...], vms: int, other_capacity: Resources | None, why: str
) -> None:
    kit = cluster(*hosts)
    if other_capacity is not None:
        kit.heartbeat("h2", capacity=other_capacity)  # 2 cores: room for 2 of the 4
    fill(kit, "h1", vms)
    before = {n: (r.state, r.host, r.generation) for n, r in kit.state.vms.items()}
    reply = host_op(kit, Op.DRAIN, "h1", cold=True)
    assert reply.error is not None and reply.error.code is ErrorCode.INSUFFICIENT_CAPACITY
    assert reply.error.detail.startswith(f"cannot drain h1: {why}")
    assert not any(isinstance(a, Emit) for a in kit.actions) and commands(kit.actions) == []
    assert not kit.host("h1").cordoned and not kit.host("h1").draining
    assert {n: (r.state, r.host, r.generation) for n, r in kit.state.vms.items()} == before


def test_drain_of_an_empty_host_completes_at_once() -> None:
    kit = cluster("h1")
    reply = host_op(kit, Op.DRAIN, "h1", cold=True)
    assert reply.host is not None and reply.host.cordoned and not reply.host.draining
    assert [e.reason for e in host_events(kit)] == ["drain started", "drain complete"]


def test_stop_asked_for_during_a_move_wins() -> None:
    kit = cluster("h1", "h2")
    [name] = fill(kit, "h1", 1)
    host_op(kit, Op.DRAIN, "h1", cold=True)
    kit.mutate(Op.STOP, VmRef(name=name))
    kit.heartbeat("h1", [])
    record = kit.vm(name)
    assert record.state is VmState.STOPPED and record.host is None
    assert record.drained_from is None
    kit.advance(0.2)
    assert not kit.host("h1").draining


def test_vm_being_moved_off_a_host_that_dies_is_placed_again_not_stopped() -> None:
    kit = cluster("h1", "h2")
    [name] = fill(kit, "h1", 1)
    host_op(kit, Op.DRAIN, "h1", cold=True)
    for _ in range(7):
        kit.heartbeat("h2", agent_report(kit, "h2"))
        kit.advance(1.0)
    assert not kit.host("h1").up
    record = kit.vm(name)
    assert record.host == "h2" and record.state is VmState.SCHEDULED and record.generation == 2


def test_uncordon_cancels_a_drain_and_vms_not_yet_moved_stay() -> None:
    kit = cluster("h1", "h2", drain_parallelism=1)
    names = fill(kit, "h1", 3)
    host_op(kit, Op.DRAIN, "h1", cold=True)
    reply = host_op(kit, Op.UNCORDON, "h1")
    assert reply.host is not None and not reply.host.cordoned and not reply.host.draining
    kit.heartbeat("h1", agent_report(kit, "h1"))  # the one move under way finishes
    kit.advance(0.2)
    assert [kit.vm(n).host for n in names[1:]] == ["h1", "h1"]
    assert kit.vm(names[0]).state is VmState.SCHEDULED


def test_cordon_during_a_drain_keeps_draining() -> None:
    kit = cluster("h1", "h2")
    fill(kit, "h1", 1)
    host_op(kit, Op.DRAIN, "h1", cold=True)
    reply = host_op(kit, Op.CORDON, "h1")
    assert reply.host is not None and reply.host.draining and reply.host.drain_remaining == 1


def test_failed_drain_job_is_rejected_on_the_event_stream() -> None:
    kit = cluster("h1")
    fill(kit, "h1", 1)
    reply = host_op(kit, Op.DRAIN, "h1", via_job=True, job_subject="stratus.jobs.host.drain")
    assert reply.error is not None
    assert [subjects.of_event(a.event) for a in kit.actions if isinstance(a, Emit)] == [
        "stratus.events.job.rejected"
    ]
