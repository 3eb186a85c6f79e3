"""The agent's side of replicas: the plan from what a host holds to what ConfigureReplicas names,
the statuses its heartbeat reports, one set applied at a time (the newest next), and
SetDiskReplicas judged like any command about one VM (exact generation, a lease)."""

from __future__ import annotations

import pytest

from common.messages import ObservedState, ObservedVm
from common.replica_messages import (
    ConfigureReplicas,
    ReplicaRef,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    SetDiskReplicas,
)
from hostagent.agent import apply_replicas
from hostagent.drivers.fakequorum import DiskLedger
from hostagent.replicaplan import (
    Held,
    ReplicaPlan,
    check_disk_ids,
    plan_replicas,
    replica_statuses as statuses,
)
from hostagent.replicas import ReplicaError
from hostagent.replicasim import SimulatedReplicas
from hostagent.state import AgentState
from hostagent.stimuli import (
    AckReceived,
    ApplyReplicas,
    CommandsReceived,
    DriverSetReplicas,
    HeartbeatDue,
    ReplicasApplied,
    SendHeartbeat,
)
from tests.unit.hostagent.conftest import ack_for, make_state
from tests.unit.hostagent.syncagent import run_now

SOURCE = ReplicaRef(host="h2", address="10.0.0.2", port=10809)


def data(disk_id: str, *, fill: bool = False) -> ReplicaSpec:
    return ReplicaSpec(
        disk_id=disk_id, vm="vm-1", kind="data", size_mib=100, fill_from=SOURCE if fill else None
    )


@pytest.mark.parametrize(
    ("desired", "held", "plan"),
    [
        ([data("d1")], {}, ReplicaPlan(make=(data("d1"),))),
        ([data("d1")], {"d1": Held(made=True, exported=True)}, ReplicaPlan()),
        ([data("d1")], {"d1": Held(made=True)}, ReplicaPlan(export=("d1",))),
        ([data("d1")], {"d1": Held(filling=0.5)}, ReplicaPlan()),
        ([data("d1")], {"d1": Held(failed="no room")}, ReplicaPlan(make=(data("d1"),))),
        ([], {"d1": Held(made=True, exported=True)}, ReplicaPlan(delete=("d1",))),
        ([], {"d1": Held(filling=0.1)}, ReplicaPlan(delete=("d1",))),
        (
            [data("d2", fill=True)],
            {"d1": Held(made=True), "d2": Held(made=True)},
            ReplicaPlan(delete=("d1",), export=("d2",)),
        ),
    ],
    ids=[
        "missing-is-made",
        "served-is-left",
        "made-unexported-is-exported",
        "being-made-is-left",
        "failed-is-tried-again",
        "unnamed-is-deleted",
        "unnamed-fill-is-cancelled",
        "delete-one-export-other",
    ],
)
def test_plan(desired: list[ReplicaSpec], held: dict[str, Held], plan: ReplicaPlan) -> None:
    assert plan_replicas(desired, held) == plan
    assert plan_replicas(desired, held).empty == (plan == ReplicaPlan())


def test_statuses_name_the_replicas_not_ready_with_their_progress() -> None:
    desired = [data("d1"), data("d2", fill=True), data("d3"), data("d4"), data("d5", fill=True)]
    held = {
        "d1": Held(made=True, exported=True),
        "d2": Held(filling=0.25),
        "d3": Held(failed="no room", retryable=False),
        "d5": Held(made=True),
    }
    assert statuses(desired, held) == [
        ReplicaStatus(disk_id="d2", state=ReplicaState.FILLING, progress=0.25),
        ReplicaStatus(disk_id="d3", state=ReplicaState.FAILED, reason="no room"),
        ReplicaStatus(disk_id="d4", state=ReplicaState.CREATING),
        ReplicaStatus(disk_id="d5", state=ReplicaState.CREATING),
    ]


@pytest.mark.parametrize(
    ("desired", "why"),
    [
        ([data("d1"), data("d1")], "disk d1 is named twice"),
        ([data("../etc")], "invalid disk id '../etc'"),
        ([data("D1")], "invalid disk id 'D1'"),
        ([data("d1"), data("d2")], ""),
    ],
    ids=["twice", "path", "upper", "fine"],
)
def test_bad_sets_are_refused(desired: list[ReplicaSpec], why: str) -> None:
    assert check_disk_ids(desired) == why


def test_the_simulated_backend_fills_at_its_bandwidth_and_refuses_a_bad_set() -> None:
    now = [100.0]
    sim = SimulatedReplicas(lambda: now[0], fill_mib_s=50.0)
    sim.apply_now(ConfigureReplicas(replicas=[data("d1"), data("d2", fill=True)], digest="a"))
    assert sim.applied_digest == "a" and sim.used_mib() == 200
    assert sim.statuses() == [ReplicaStatus(disk_id="d2", state=ReplicaState.FILLING)]
    now[0] = 101.0  # 50 of 100 MiB copied
    assert sim.statuses()[0].progress == pytest.approx(0.5)
    now[0] = 102.0
    assert sim.statuses() == [] and sim.ready("d2")
    with pytest.raises(ReplicaError):
        sim.apply_now(ConfigureReplicas(replicas=[data("d1"), data("d1")], digest="b"))
    assert sim.applied_digest == "a" and set(sim.held) == {"d1", "d2"}
    sim.apply_now(ConfigureReplicas(replicas=[data("d2")], digest="c"))
    assert set(sim.held) == {"d2"} and sim.used_mib() == 100


def test_a_copy_made_before_and_no_longer_held_is_lost_never_made_anew() -> None:
    """A host back without its disks must not serve an empty copy of a disk that had writes:
    the scheduler names the copies made before, and the host reports those it lacks lost."""
    desired = [data("d1"), data("d2"), data("d3", fill=True)]
    held = {"d1": Held(made=True, exported=True)}
    existing = {"d1", "d2", "d3"}
    assert plan_replicas(desired, held, existing) == ReplicaPlan()
    assert [(s.disk_id, s.state, s.retryable) for s in statuses(desired, held, existing)] == [
        ("d2", ReplicaState.LOST, False),
        ("d3", ReplicaState.LOST, False),
    ]
    now = [100.0]
    sim = SimulatedReplicas(lambda: now[0])
    sim.apply_now(ConfigureReplicas(replicas=desired[:2], digest="a", existing=["d2"]))
    assert set(sim.held) == {"d1"}
    assert [(s.disk_id, s.state) for s in sim.statuses()] == [("d2", ReplicaState.LOST)]
    sim.apply_now(ConfigureReplicas(replicas=desired[:1], digest="b"))  # the scheduler drops it
    assert sim.statuses() == []
    sim.held.clear()  # its file is gone while the agent runs: it was made here, so it is lost
    sim.apply_now(ConfigureReplicas(replicas=desired[:1], digest="b"))
    assert [(s.disk_id, s.state) for s in sim.statuses()] == [("d1", ReplicaState.LOST)]


def test_an_agent_started_again_finds_the_copies_its_disks_still_have() -> None:
    ledger = DiskLedger()
    before = SimulatedReplicas(lambda: 100.0, ledger=ledger, host_id="h1")
    before.apply_now(ConfigureReplicas(replicas=[data("d1")], digest="a"))
    again = SimulatedReplicas(lambda: 200.0, ledger=ledger, host_id="h1")
    again.apply_now(
        ConfigureReplicas(replicas=[data("d1"), data("d2")], digest="a2", existing=["d1"])
    )
    assert again.statuses() == [] and set(again.held) == {"d1", "d2"}
    ledger.host_gone("h1")  # its disks are gone: a third start finds nothing
    third = SimulatedReplicas(lambda: 300.0, ledger=ledger, host_id="h1")
    third.apply_now(ConfigureReplicas(replicas=[data("d1")], digest="a3", existing=["d1"]))
    assert [(s.disk_id, s.state) for s in third.statuses()] == [("d1", ReplicaState.LOST)]


def leased() -> AgentState:
    state = make_state()
    [send] = state.handle(HeartbeatDue([]), 100.0)
    assert isinstance(send, SendHeartbeat)
    state.handle(AckReceived(ack_for(send.heartbeat)), 100.0)
    return state


def config(*specs: ReplicaSpec, digest: str) -> ConfigureReplicas:
    return ConfigureReplicas(replicas=list(specs), digest=digest)


def test_one_set_is_applied_at_a_time_the_newest_next_and_reported() -> None:
    state = leased()
    first, second, third = (config(data(f"d{i}"), digest=f"s{i}") for i in range(3))
    out = state.handle(CommandsReceived([first], []), 100.0)
    assert [i.config for i in out if isinstance(i, ApplyReplicas)] == [first]
    assert not state.idle()
    assert state.handle(CommandsReceived([second], []), 100.0) == []
    assert state.handle(CommandsReceived([third], []), 100.0) == []
    out = state.handle(ReplicasApplied(first, first.digest), 100.1)
    assert [i.config for i in out if isinstance(i, ApplyReplicas)] == [third]
    creating = [ReplicaStatus(disk_id="d2", state=ReplicaState.CREATING)]
    [send] = state.handle(HeartbeatDue([], replicas=creating), 100.2)
    assert isinstance(send, SendHeartbeat)
    assert (send.heartbeat.replica_digest, send.heartbeat.replicas) == ("s0", creating)
    state.handle(ReplicasApplied(third, "s0", error="replica server down"), 100.3)
    assert state.idle()
    [send] = state.handle(HeartbeatDue([]), 100.4)
    assert isinstance(send, SendHeartbeat) and send.heartbeat.replica_digest == "s0"


def test_replica_sets_wait_for_the_host_id_like_any_command() -> None:
    out = make_state().handle(CommandsReceived([config(data("d1"), digest="x")], []), 100.0)
    assert not any(isinstance(i, ApplyReplicas) for i in out)


def running(generation: int, state: ObservedState = ObservedState.RUNNING) -> ObservedVm:
    return ObservedVm(name="vm-1", generation=generation, state=state, cpu_milli=1000, mem_mib=64)


def set_replicas(generation: int) -> SetDiskReplicas:
    return SetDiskReplicas(name="vm-1", generation=generation, disk_id="d1", replicas=[SOURCE])


@pytest.mark.parametrize(
    ("held", "generation", "driven"),
    [
        ([running(3)], 3, True),
        ([running(3, ObservedState.PAUSED)], 3, True),
        ([running(3)], 2, False),
        ([running(3)], 4, False),
        ([], 3, False),
        ([running(3, ObservedState.HANDED_OVER)], 3, False),
    ],
    ids=["running", "paused", "older", "newer", "absent", "handed-over"],
)
def test_disk_replicas_change_only_the_vm_held_at_that_generation(
    held: list[ObservedVm], generation: int, driven: bool
) -> None:
    state = leased()
    out = state.handle(CommandsReceived([set_replicas(generation)], held), 100.0)
    calls = [i for i in out if isinstance(i, DriverSetReplicas)]
    assert calls == ([DriverSetReplicas(set_replicas(generation))] if driven else [])


def test_disk_replicas_are_refused_without_a_lease() -> None:
    state = leased()
    command = CommandsReceived([set_replicas(3)], [running(3)])
    out = state.handle(command, 100.0 + 60.0)  # long after the lease ran out
    assert not any(isinstance(i, DriverSetReplicas) for i in out)


def test_the_backend_result_comes_back_as_a_stimulus() -> None:
    sim = SimulatedReplicas(lambda: 0.0)
    bad = config(data("d1"), data("d1"), digest="bad")
    done = run_now(apply_replicas(sim, ApplyReplicas(bad)))
    assert done.error == "disk d1 is named twice" and done.digest == ""
