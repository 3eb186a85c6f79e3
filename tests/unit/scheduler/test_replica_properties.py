"""Random histories of replicated VMs (creates, stops, starts, deletes, hosts killed and back,
copies brought in step) against agents that keep honest accounts of every write: after every
step, every copy the scheduler counts current has every write the guest was told is done, no
two live copies of a disk share a fault domain, no host's disks are over its capacity, and a
disk is never given a copy it cannot have all the writes of."""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, given, settings, strategies as st

from common.ids import HostId, VmName
from common.messages import DiskStorage, VmRef, VmState
from scheduler.core import hostreplicas, replicas as core_replicas
from scheduler.core.contract import Op
from scheduler.state.storage import CopyState
from tests.unit.scheduler.replkit import ReplicaKit

HOSTS = {"h1": "fd-a", "h2": "fd-a", "h3": "fd-b", "h4": "fd-c", "h5": "fd-c"}
CAPACITY_MIB = {"h1": 6000, "h2": 0, "h3": 9000, "h4": 5000, "h5": 0}
VMS = ("a", "b", "c", "d")

ops = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(VMS), st.sampled_from([[], [512], [2048]])),
    st.tuples(st.sampled_from(["stop", "start", "delete", "join"]), st.sampled_from(VMS)),
    st.tuples(st.sampled_from(["kill", "wipe", "revive"]), st.sampled_from(sorted(HOSTS))),
    st.tuples(st.just("tick"), st.integers(1, 3)),
)


def check(kit: ReplicaKit, replicas: int, *, settled: bool = False) -> None:
    """The invariants; ``settled``: also that every current copy its host serves has every
    write (in between, a host's report may lag: nothing is started from a copy then)."""
    assert not kit.violations, kit.violations
    state = kit.state
    for record in state.vms.values():
        if record.state is VmState.DELETED:
            continue
        for disk in record.disks:
            if not disk.replicated:
                continue
            live = [c.host for c in disk.copies if c.state is not CopyState.LOST]
            domains = [state.hosts[h].fault_domain for h in live]
            assert len(set(domains)) == len(domains), (record.name, disk.disk_id, live)
            assert len(live) <= replicas
            for host in disk.copy_hosts():
                if host in kit.gone:
                    continue  # gone, not declared dead yet
                assert state.hosts[host].up, (record.name, host)
                if not settled or not core_replicas.copy_ready(state, host, disk.disk_id):
                    continue
                have = kit.seq.get((disk.disk_id, host), 0)
                acked = kit.acked.get(disk.disk_id, 0)
                assert have == acked, f"{disk.disk_id} on {host}: {have} of {acked} writes"
            if record.state is VmState.RUNNING:
                assert disk.copy_hosts(), record.name
    for name, capacity in CAPACITY_MIB.items():
        if capacity:
            assert state.disks.used_mib.get(HostId(name), 0) <= capacity, name
    check_kept_sets(kit)


def lost_for_good(kit: ReplicaKit) -> set[VmName]:
    return {
        r.name
        for r in kit.state.vms.values()
        if r.state is VmState.FAILED and r.reason.startswith("every replica")
    }


def check_failed_only_when_none_can_come_back(kit: ReplicaKit, before: set[VmName]) -> None:
    """A VM failed (in this step) for its disk's every copy lost has no copy left that a host
    could give back: none of its hosts (up or silent) holds it still."""
    for name in lost_for_good(kit) - before:
        record = kit.state.vms[name]
        for disk in record.disks:
            for copy in disk.copies:
                holds = kit.made.get(copy.host, set()) - kit.lost.get(copy.host, set())
                assert disk.disk_id not in holds, (record.name, copy.host, "holds it")


def check_kept_sets(kit: ReplicaKit) -> None:
    """Each host's replica set, kept up to date disk by disk, is the one computed anew."""
    state, rate = kit.state, kit.config.storage.rebuild_mib_per_s
    for host, kept in kit.core.carry.replicas.items():
        if host not in state.disks.dirty_hosts:
            assert kept.replicas.whole() == hostreplicas.desired(state, host, rate), host


def apply(kit: ReplicaKit, op: tuple[object, ...]) -> None:
    match op:
        case ("create", vm, data):
            if vm not in kit.state.vms or kit.vm(str(vm)).state is VmState.DELETED:
                kit.create(str(vm), storage=DiskStorage.REPLICATED, data_disks_mib=data)
        case ("stop" | "start" | "delete" as verb, vm):
            if vm in kit.state.vms:
                kit.mutate(Op(verb), VmRef(name=str(vm)))
        case ("join", vm):
            kit.join(str(vm))
        case ("kill" | "wipe" as how, host):
            if host in kit.domains and len(kit.domains) > 2:
                kit.kill(str(host), wipe=how == "wipe")
        case ("revive", host):
            if host in kit.gone:
                kit.revive(str(host))
        case ("tick", seconds):
            kit.advance(float(seconds))  # type: ignore[arg-type]
            kit.beat_all()
        case _:
            raise AssertionError(op)


KNOWN_RACE = [
    ("create", "a", [512]),
    ("kill", "h1"),
    ("wipe", "h5"),
    ("revive", "h1"),
    ("revive", "h5"),
]
"""Found by this test (about one run in 30, 150 examples each): both copy hosts die before
either is declared dead; h1 comes back first and is told to start the VM with its copies on h1
and h5; h5 comes back without its disks before h1 acts. Had h5 made its copy anew (empty), h1
would have written to a copy missing writes; a host is told which copies were made before
(``ConfigureReplicas.existing``) and reports them lost instead."""


EXAMPLES = int(os.environ.get("STRATUS_REPLICA_EXAMPLES", "0"))
"""Opt in to a long random campaign (e.g. 20000 examples); by default CI replays a fixed set
of 150, so that a rare history found later does not turn it red at random."""


@settings(
    max_examples=EXAMPLES or 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=not EXAMPLES,
)
@given(st.lists(ops, min_size=1, max_size=40), st.sampled_from([2, 3]))
def test_current_copies_always_hold_every_acknowledged_write(
    history: list[tuple[object, ...]], replicas: int
) -> None:
    try:
        replay(history, replicas)
    except AssertionError:
        print("history:", replicas, history)  # in the report, whatever hypothesis shows
        raise


def replay(history: list[tuple[object, ...]], replicas: int) -> None:
    kit = ReplicaKit(replicas=replicas)
    for host, domain in HOSTS.items():
        kit.add_host(host, domain, capacity_mib=CAPACITY_MIB[host])
    seen: Counter[str] = Counter()
    for op in history:
        failed = lost_for_good(kit)
        apply(kit, op)
        kit.beat_all()
        check(kit, replicas)
        check_failed_only_when_none_can_come_back(kit, failed)
        seen[str(op[0])] += 1
    for _ in range(12):  # quiet: everything settles, lost copies are made again
        kit.advance(1.0)
        kit.beat_all()
        for vm in VMS:
            kit.join(vm)
        check(kit, replicas)
    check(kit, replicas, settled=True)


def test_a_copy_host_back_without_its_disks_is_never_named_to_a_starting_vm() -> None:
    replay(list(KNOWN_RACE), 2)
