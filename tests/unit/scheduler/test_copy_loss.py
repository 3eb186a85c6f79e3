"""A disk whose every current copy is gone with its hosts: the VM waits for one to come back
(it does not fail while one may), runs again from it when it does, and fails only once none
can: a late heartbeat never destroys a VM's disks."""

from __future__ import annotations

from common.ids import HostId
from common.messages import DiskStorage, StartVm, VmRef, VmReply, VmState
from common.migration_messages import MigrateVm
from scheduler.core.contract import Op
from scheduler.state.storage import CopyState
from tests.unit.scheduler.replkit import PORT, ReplicaKit

DOMAINS = {"h1": "fd-a", "h2": "fd-b", "h3": "fd-c", "h4": "fd-d"}


def kit_of(replicas: int = 2, **config: object) -> ReplicaKit:
    kit = ReplicaKit(replicas=replicas, **config)
    for host, domain in DOMAINS.items():
        kit.add_host(host, domain)
    return kit


def run(kit: ReplicaKit, vm: str) -> str:
    kit.create(vm, storage=DiskStorage.REPLICATED, data_disks_mib=[512])
    for _ in range(3):
        kit.beat_all()
    record = kit.vm(vm)
    assert record.state is VmState.RUNNING, record.reason
    assert record.host is not None
    return record.host


def silence(kit: ReplicaKit, quiet: list[str], seconds: int = 8) -> None:
    """``quiet`` send nothing for ``seconds`` (a stall, a cut link); the others report."""
    for _ in range(seconds):
        kit.advance(1.0)
        kit.beat_all(*[h for h in kit.domains if h not in quiet])


def lose_copy_hosts(kit: ReplicaKit, *, wipe: bool, seconds: int = 8) -> list[str]:
    """``web`` runs; then every host holding a copy of its disks dies (its disks kept or wiped)
    and is declared dead. Those hosts."""
    run(kit, "web")
    holders = sorted({h for hosts in kit.copies("web") for h in hosts})
    for host in holders:
        kit.kill(host, wipe=wipe)
    silence(kit, holders, seconds)
    return holders


def writes_held(kit: ReplicaKit, vm: str) -> None:
    """Every current copy of the VM's disks has every write its guest was told is done."""
    for disk in kit.vm(vm).disks:
        for host in disk.copy_hosts():
            assert kit.seq.get((disk.disk_id, host), 0) == kit.acked.get(disk.disk_id, 0)


def test_a_vm_whose_copy_hosts_all_stall_runs_again_with_its_writes_when_they_report() -> None:
    kit = kit_of()
    host = run(kit, "web")
    holders = sorted({h for hosts in kit.copies("web") for h in hosts})
    assert host in holders
    for _ in range(3):
        kit.beat_all()  # the guest writes
    acked = dict(kit.acked)
    assert all(acked.values())
    silence(kit, holders)
    record = kit.vm("web")
    assert all(not kit.state.hosts[HostId(h)].up for h in holders)  # declared dead
    assert record.state is VmState.PENDING, record.reason
    assert record.reason.startswith("waiting for a copy of disk"), record.reason
    assert "every host holding one is down" in record.reason
    for _ in range(4):
        kit.advance(1.0)
        kit.beat_all()  # the stalled hosts report again, with their disks
    record = kit.vm("web")
    assert record.state is VmState.RUNNING, record.reason
    assert record.host in holders
    writes_held(kit, "web")
    assert all(kit.acked[d] >= n for d, n in acked.items())


def test_the_last_copies_are_kept_lost_and_their_hosts_keep_them() -> None:
    kit = kit_of()
    holders = lose_copy_hosts(kit, wipe=False)
    lost = kit.copies("web", CopyState.LOST)
    assert all(sorted(hosts) == holders for hosts in lost), lost  # none dropped
    for host in holders:
        wanted = {r.disk_id for r in kit.wanted_set(host).replicas}
        assert {d.disk_id for d in kit.vm("web").disks} <= wanted  # never deleted


def test_a_vm_waiting_for_its_disk_does_not_time_out() -> None:
    kit = kit_of(placement_timeout_s=5.0)
    holders = lose_copy_hosts(kit, wipe=False, seconds=30)
    record = kit.vm("web")
    assert record.state is VmState.PENDING, record.reason
    for host in holders:
        kit.revive(host)
    for _ in range(4):
        kit.advance(1.0)
        kit.beat_all()
    assert kit.vm("web").state is VmState.RUNNING, kit.vm("web").reason
    writes_held(kit, "web")


def test_a_copy_host_back_without_its_disks_fails_the_vm_once_none_can_come_back() -> None:
    kit = kit_of()
    holders = lose_copy_hosts(kit, wipe=True)
    assert kit.vm("web").state is VmState.PENDING
    kit.revive(holders[0])
    for _ in range(3):
        kit.advance(1.0)
        kit.beat_all()
    record = kit.vm("web")
    assert record.state is VmState.PENDING, record.reason  # the other may still come back
    assert holders[1] in record.reason and holders[0] not in record.reason
    kit.revive(holders[1])
    for _ in range(3):
        kit.advance(1.0)
        kit.beat_all()
    record = kit.vm("web")
    assert record.state is VmState.FAILED
    disk_id = record.reason.removeprefix("every replica of disk ").removesuffix(" lost")
    assert disk_id in {d.disk_id for d in record.disks}
    assert all(hosts for hosts in kit.copies("web", CopyState.LOST))  # never new, empty ones
    starts = [c for c in kit.sent(StartVm) if isinstance(c, StartVm)]
    kit.mutate(Op.START, VmRef(name="web"))
    assert kit.vm("web").state is VmState.FAILED
    assert [c for c in kit.sent(StartVm) if isinstance(c, StartVm)] == starts


def test_one_copy_back_is_the_disk_and_the_others_are_dropped_then_rebuilt() -> None:
    kit = kit_of(replicas=3)
    holders = lose_copy_hosts(kit, wipe=False)
    assert len(holders) == 3
    first = holders[1]
    kit.revive(first)
    for _ in range(3):
        kit.advance(1.0)
        kit.beat_all()
    record = kit.vm("web")
    assert record.state is VmState.RUNNING, record.reason
    assert record.host == first
    for hosts in kit.copies("web", CopyState.LOST):
        assert hosts == []  # behind once the VM writes to the copy back: dropped
    writes_held(kit, "web")


def test_a_migrating_vm_whose_copy_hosts_all_die_ends_its_attempt_and_waits() -> None:
    kit = ReplicaKit(replicas=2)
    for host, domain in DOMAINS.items():
        kit.add_host(host, domain, port=0 if host in ("h1", "h4") else PORT)
    kit.host_op(Op.CORDON, "h4")
    kit.create("web", storage=DiskStorage.REPLICATED)
    kit.host_op(Op.UNCORDON, "h4")
    for _ in range(3):
        kit.beat_all()
    assert kit.vm("web").state is VmState.RUNNING
    assert kit.vm("web").host == "h1"  # the copies on h2 and h3: none on its host
    reply = kit.ask(Op.MIGRATE, MigrateVm(name="web", to="h4"))
    assert isinstance(reply, VmReply) and reply.error is None, reply
    assert kit.vm("web").migration is not None
    silence(kit, ["h2", "h3"])
    record = kit.vm("web")
    assert record.migration is None
    assert record.state is VmState.PENDING, record.reason
    assert record.reason.startswith("waiting for a copy of disk"), record.reason
    told = [type(c).__name__ for c in kit.sent(object, "h4")]
    assert "CancelMigration" in told or "DeleteVm" in told, told  # its incoming copy goes
