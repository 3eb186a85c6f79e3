"""Replica sets as changes on the agent's side: the gate applies an update only to the set it is
based on and keeps commands in order (a whole set drops those before it); the simulated backend
applies an update in O(its size) and refuses one that does not fit, changing nothing; the replica
server's merge leaves the set it merged into as it was. A set's digest is the same whole or built
by changes, in any order."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from msgspec.structs import replace

from common.replica_messages import (
    ConfigureReplicas,
    ReplicaRef,
    ReplicaSpec,
    ReplicaState,
    ReplicaStatus,
    UpdateReplicas,
)
from common.replicaset import ReplicaSet, digest_of
from hostagent.drivers.fakequorum import DiskLedger
from hostagent.replicagate import ReplicaGate
from hostagent.replicas import ReplicaError, merged
from hostagent.replicasim import SimulatedReplicas
from hostagent.stimuli import ApplyReplicas, Instruction, Note, ReplicasApplied

SOURCE = ReplicaRef(host="h2", address="10.0.0.2", port=10809)


def data(disk_id: str, *, fill: bool = False, size_mib: int = 100) -> ReplicaSpec:
    return ReplicaSpec(
        disk_id=disk_id,
        vm="vm-1",
        kind="data",
        size_mib=size_mib,
        fill_from=SOURCE if fill else None,
    )


def whole(*specs: ReplicaSpec, existing: tuple[str, ...] = ()) -> ConfigureReplicas:
    config = ConfigureReplicas(replicas=list(specs), digest="", existing=list(existing))
    config.digest = digest_of(config)
    return config


def update(
    base: ConfigureReplicas,
    *,
    added: tuple[ReplicaSpec, ...] = (),
    changed: tuple[ReplicaSpec, ...] = (),
    removed: tuple[str, ...] = (),
    existing: tuple[str, ...] = (),
) -> UpdateReplicas:
    """The update from ``base``, its digest computed as the scheduler does."""
    made = UpdateReplicas(
        base=base.digest,
        digest="",
        added=list(added),
        changed=list(changed),
        removed=list(removed),
        existing=list(existing),
    )
    following = ReplicaSet.of(base)
    following.apply(made)
    made.digest = following.digest
    return made


# --------------------------------------------------------------------------- the digest


specs = st.builds(
    data,
    st.sampled_from([f"d{i}" for i in range(6)]),
    fill=st.booleans(),
    size_mib=st.integers(1, 4),
)


@given(st.lists(st.tuples(st.booleans(), specs), max_size=30))
def test_a_sets_digest_is_the_same_whole_or_built_by_changes(
    steps: list[tuple[bool, ReplicaSpec]],
) -> None:
    kept = ReplicaSet()
    for put, spec in steps:
        if put:
            kept.put(spec)
        else:
            kept.drop(spec.disk_id)
    config = kept.whole()
    assert kept.digest == digest_of(config)
    assert digest_of(replace(config, replicas=config.replicas[::-1])) == kept.digest
    assert (kept.digest == "") == (not config.replicas)


# --------------------------------------------------------------------------- the gate


def applies(out: list[Instruction]) -> list[ConfigureReplicas | UpdateReplicas]:
    return [i.config for i in out if isinstance(i, ApplyReplicas)]


def test_an_update_applies_only_to_the_set_it_is_based_on() -> None:
    gate = ReplicaGate()
    out: list[Instruction] = []
    first = whole(data("d1"))
    gate.receive(first, out)
    assert applies(out) == [first]
    gate.applied(ReplicasApplied(first, first.digest), out := [])
    on_it = update(first, added=(data("d2"),))
    elsewhere = update(whole(data("d9")), added=(data("d2"),))
    gate.receive(elsewhere, out := [])
    assert applies(out) == [] and not gate.pending
    assert any(isinstance(i, Note) and "ignored" in i.event for i in out)
    assert gate.digest == first.digest  # it keeps reporting what it holds
    gate.receive(on_it, out := [])
    assert applies(out) == [on_it]
    assert gate.applied(ReplicasApplied(on_it, on_it.digest), [])
    assert gate.digest == on_it.digest


def test_commands_wait_in_order_and_a_whole_set_drops_those_before_it() -> None:
    gate = ReplicaGate()
    first = whole(data("d1"))
    one = update(first, added=(data("d2"),))
    two = update(whole(data("d1"), data("d2")), removed=("d1",))
    gate.receive(first, [])
    gate.receive(one, [])
    gate.receive(two, [])
    out: list[Instruction] = []
    gate.applied(ReplicasApplied(first, first.digest), out)
    assert applies(out) == [one]
    gate.applied(ReplicasApplied(one, one.digest), out := [])
    assert applies(out) == [two]
    # a whole set arriving while one is applied replaces what waits before it
    again = whole(data("d7"))
    after = update(again, added=(data("d8"),))
    gate.receive(update(whole(data("d2")), added=(data("d3"),)), [])
    gate.receive(again, [])
    gate.receive(after, [])
    gate.applied(ReplicasApplied(two, two.digest), out := [])
    assert applies(out) == [again]
    gate.applied(ReplicasApplied(again, again.digest), out := [])
    assert applies(out) == [after]


def test_a_failed_update_leaves_the_digest_and_the_next_is_ignored() -> None:
    gate = ReplicaGate()
    first = whole(data("d1"))
    gate.receive(first, [])
    gate.applied(ReplicasApplied(first, first.digest), [])
    one = update(first, added=(data("d2"),))
    two = update(whole(data("d1"), data("d2")), added=(data("d3"),))
    gate.receive(one, [])
    gate.receive(two, [])
    out: list[Instruction] = []
    assert not gate.applied(ReplicasApplied(one, first.digest, error="server down"), out)
    assert applies(out) == [] and gate.digest == first.digest


# --------------------------------------------------------------------------- the simulated backend


def test_the_simulated_backend_applies_an_update_as_the_whole_set_it_leads_to() -> None:
    now = [100.0]
    ledger = DiskLedger()
    sim = SimulatedReplicas(lambda: now[0], fill_mib_s=50.0, ledger=ledger, host_id="h1")
    first = whole(data("d1"), data("d2"))
    sim.apply_now(first)
    change = update(
        first, added=(data("d3", fill=True),), changed=(data("d2", size_mib=7),), removed=("d1",)
    )
    sim.update_now(change)
    assert sim.applied_digest == change.digest == sim.replica_set.digest
    assert set(sim.held) == {"d2", "d3"}
    assert ledger.count("d1", "h1") is None  # deleted from the host's disks
    assert sim.replica_set.spec("d2") == data("d2", size_mib=7)
    assert sim.statuses() == [ReplicaStatus(disk_id="d3", state=ReplicaState.FILLING)]
    now[0] = 103.0
    assert sim.statuses() == [] and sim.ready("d3")
    alike = SimulatedReplicas(lambda: now[0])
    alike.apply_now(sim.replica_set.whole(change.digest))
    assert set(alike.held) == set(sim.held)


@pytest.mark.parametrize(
    "bad",
    [
        UpdateReplicas(base="0000000000000001", digest="x", added=[data("d2")]),
        UpdateReplicas(base="", digest="x", removed=["d9"]),
        UpdateReplicas(base="", digest="x", added=[data("d1")]),
        UpdateReplicas(base="", digest="x", changed=[data("d9")]),
        UpdateReplicas(base="", digest="0000000000000001", added=[data("d2")]),
        UpdateReplicas(base="", digest="x", added=[data("D2")]),
        UpdateReplicas(base="", digest="x", added=[data("d2")], removed=["d2"]),
    ],
    ids=[
        "other-base",
        "removes-missing",
        "adds-present",
        "changes-missing",
        "wrong-digest",
        "bad-disk-id",
        "named-twice",
    ],
)
def test_an_update_that_does_not_fit_is_refused_and_changes_nothing(bad: UpdateReplicas) -> None:
    sim = SimulatedReplicas(lambda: 0.0)
    first = whole(data("d1"))
    sim.apply_now(first)
    bad.base = first.digest if bad.base == "" else bad.base
    if bad.digest == "x":  # a digest it would lead to, so that only the fault is judged
        bad.digest = digest_of(whole(data("d1"), data("d2")))
    with pytest.raises(ReplicaError):
        sim.update_now(bad)
    assert sim.applied_digest == first.digest and set(sim.held) == {"d1"}
    assert sim.replica_set.whole() == first


def test_an_update_naming_a_copy_made_before_that_is_gone_reports_it_lost() -> None:
    sim = SimulatedReplicas(lambda: 0.0)
    first = whole(data("d1"))
    sim.apply_now(first)
    change = update(first, added=(data("d2"),), existing=("d2",))
    sim.update_now(change)
    assert set(sim.held) == {"d1"}
    assert [(s.disk_id, s.state) for s in sim.statuses()] == [("d2", ReplicaState.LOST)]
    sim.update_now(update(sim.replica_set.whole(change.digest), removed=("d2",)))
    assert sim.statuses() == []


def test_the_servers_merge_leaves_the_set_it_merged_into_as_it_was() -> None:
    first = whole(data("d1"), data("d2"))
    last = ReplicaSet.of(first)
    change = update(first, added=(data("d3"),), removed=("d1",))
    following = merged(last, change)
    assert following.whole(change.digest) == whole(data("d2"), data("d3"))
    assert last.whole() == first
    with pytest.raises(ReplicaError, match="based on"):
        merged(ReplicaSet(), change)
