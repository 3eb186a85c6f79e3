"""A restart indexes every stored VM at once: the same indexes as adding them one by one."""

from __future__ import annotations

from msgspec.structs import replace

from common.ids import HostId, VmName
from common.messages import DiskStorage, VmState
from common.migration_messages import MigrationCause, MigrationPhase
from common.network_messages import NicRequest
from scheduler.state.cluster import ClusterState
from scheduler.state.model import MigrationRecord, VmRecord
from tests.unit.scheduler.corekit import EPOCH
from tests.unit.scheduler.replkit import ReplicaKit


def stored_vms() -> ReplicaKit:
    """Replicated and host-local disks, NICs, availability sets; a VM migrating, one pending,
    one deleted."""
    kit = ReplicaKit()
    for host, domain in (("h1", "fd-a"), ("h2", "fd-b"), ("h3", "fd-c")):
        kit.add_host(host, domain)
    kit.vnet("front", "10.1.0.0/24")
    for name in ("a", "b", "c"):
        kit.create(name, nics=[NicRequest(vnet="front")], availability_set="set1")
    kit.create("d", data_disks_mib=[512])
    for name in ("e", "f"):
        kit.create(name, data_disks_mib=[256], storage=DiskStorage.HOST_LOCAL)
    kit.beat_all("h1", "h2", "h3")
    state = kit.state
    a = state.vms[VmName("a")]
    assert a.host is not None and a.holds_capacity
    target = HostId("h3" if a.host != "h3" else "h2")
    migration = MigrationRecord(
        source=a.host,
        target=target,
        attempt=a.next_generation(),
        cause=MigrationCause.DRAIN,
        phase=MigrationPhase.COPYING,
        started_at=EPOCH,
        progress_at=EPOCH,
    )
    state.vms[a.name] = replace(a, migration=migration)
    b = state.vms[VmName("b")]
    state.vms[b.name] = replace(b, state=VmState.PENDING, host=None, pending_since=EPOCH)
    c = state.vms[VmName("c")]
    state.vms[c.name] = replace(c, state=VmState.DELETED)
    return kit


def one_by_one(kit: ReplicaKit, records: list[VmRecord]) -> ClusterState:
    state = ClusterState(hosts=dict(kit.state.hosts))
    for vnet in kit.state.vnets.values():
        state.put_vnet(vnet)
    for record in records:
        state.add_vm(record)
    return state


def test_a_loaded_state_has_the_indexes_of_one_built_vm_by_vm() -> None:
    kit = stored_vms()
    vms = list(kit.state.vms.values())
    loaded = ClusterState.from_records(
        vms, list(kit.state.hosts.values()), {}, [], [*kit.state.vnets.values()]
    )
    loaded.check_invariants()
    ordered = list(loaded.vms.values())
    built = one_by_one(kit, ordered)
    assert loaded.incoming == built.incoming and loaded.incoming
    assert loaded.migrating == built.migrating
    assert dict(loaded.by_host) == dict(built.by_host)
    assert loaded.allocated == built.allocated
    assert dict(loaded.by_set) == dict(built.by_set)
    assert list(loaded.pending) == list(built.pending) == [VmName("b")]
    assert loaded.touched_hosts == built.touched_hosts
    assert loaded.stale_views == built.stale_views
    assert loaded.net.same_as(built.net) == []
    assert loaded.disks.same_as(built.disks) == []
    assert loaded.disks.held, "replicated disks"
    assert any(d.host for r in vms for d in r.disks), "host-local disks"
