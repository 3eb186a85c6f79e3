"""The fake driver counts its VMs' guest writes lazily (when asked, in bulk) and a write round
looks only at the VMs that need it; the accounts are those of counting every write at its
round: every copy's count, every acknowledged write, every failure a copy on a gone host
shows. Random histories on two drivers, one on a ledger that makes every write at its round."""

from __future__ import annotations

from typing import ClassVar

from hypothesis import given, settings, strategies as st

from common.messages import DiskKind, DiskSpec, VmSpec
from common.replica_messages import ReplicaRef, SetDiskReplicas
from common.spec_messages import DiskStorage
from hostagent.drivers.fake import FakeDriver
from hostagent.drivers.fakequorum import WRITE_EVERY_S, DiskLedger
from tests.unit.hostagent.conftest import FakeClock
from tests.unit.hostagent.syncagent import ROOMY, run_now

HOSTS = ["h1", "h2", "h3", "h4"]
VMS = ["vm-1", "vm-2"]


class EagerLedger(DiskLedger):
    """Every running VM writes at every round, as a ledger in files has them do."""

    settles_lazily: ClassVar[bool] = False


def ref(host: str) -> ReplicaRef:
    return ReplicaRef(host=host, address="10.0.0.1", port=10809)


def spec(name: str, hosts: list[str]) -> VmSpec:
    disks = [
        DiskSpec(
            disk_id=f"{name}-d{n}",
            kind=DiskKind.DATA,
            size_mib=100 * n,
            storage=DiskStorage.REPLICATED,
            replicas=[ref(h) for h in hosts],
        )
        for n in (1, 2)
    ]
    return VmSpec(name=name, size="S", cpu_milli=100, mem_mib=64, image="tiny", disks=disks)


class World:
    def __init__(self, ledger: DiskLedger) -> None:
        self.clock = FakeClock(100.0)
        self.ledger = ledger
        self.driver = FakeDriver(ROOMY, clock_s=self.clock.monotonic_s, ledger=ledger)
        self.generations = dict.fromkeys(VMS, 0)
        for host in HOSTS:
            ledger.made(f"{VMS[0]}-d1", host)

    def apply(self, op: tuple[object, ...]) -> None:  # noqa: C901 - one case per operation
        driver, name = self.driver, str(op[1]) if len(op) > 1 else VMS[0]
        match op:
            case ("look", _, times):
                for _ in range(int(str(times))):
                    self.clock.now_s += WRITE_EVERY_S
                    driver.inventory()
            case ("peek", _):
                self.clock.now_s += WRITE_EVERY_S / 3
                driver.inventory()
            case ("start", _, hosts):
                if not driver.console_writable(name):  # (held: asking counts nothing)
                    self.generations[name] += 1
                    generation = self.generations[name]
                    run_now(driver.start(spec(name, list(hosts)), generation))  # type: ignore[call-overload]
            case ("stop", _):
                run_now(driver.stop(name))
            case ("pause", _):
                if driver.console_writable(name):
                    run_now(driver.pause(name))
            case ("resume", _):
                if driver.console_writable(name):
                    run_now(driver.resume(name))
            case ("gone", host):
                self.ledger.host_gone(str(host))
            case ("count", _, host):
                self.ledger.count(f"{name}-d1", str(host))
            case ("set", _, kept, joining):
                if not driver.console_writable(name):
                    return
                [seen] = [vm for vm in driver.inventory() if vm.name == name]
                members = seen.disks[0].in_sync
                keep = [h for h in members if h in kept] or members[:1]  # type: ignore[operator]
                command = SetDiskReplicas(
                    name=name,
                    generation=self.generations[name],
                    disk_id=f"{name}-d1",
                    replicas=[ref(h) for h in keep],
                    joining=[ref(h) for h in joining],  # type: ignore[attr-defined]
                    speed_mib_s=400.0,
                )
                run_now(driver.set_disk_replicas(command))
            case _:
                raise AssertionError(op)

    def accounts(self) -> object:
        """Everything the ledger and the driver tell (asking counts the writes)."""
        vms = {}
        for name in VMS:
            quorums = self.driver.quorums(name)
            if quorums is not None:
                vms[name] = [(d.members, d.failed, sorted(d.joins), d.acked) for d in quorums.disks]
        writes = {disk: dict(copies) for disk, copies in self.ledger.writes.items()}
        return writes, vms, self.driver.inventory()


vm = st.sampled_from(VMS)
host = st.sampled_from(HOSTS)
hosts = st.lists(host, min_size=1, max_size=3, unique=True)
ops = st.one_of(
    st.tuples(st.just("look"), vm, st.integers(1, 12)),
    st.tuples(st.just("peek"), vm),
    st.tuples(st.just("start"), vm, hosts),
    st.tuples(st.just("stop"), vm),
    st.tuples(st.just("pause"), vm),
    st.tuples(st.just("resume"), vm),
    st.tuples(st.just("gone"), host),
    st.tuples(st.just("count"), vm, host),
    st.tuples(st.just("set"), vm, hosts, st.lists(host, max_size=2, unique=True)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(ops, min_size=1, max_size=30))
def test_writes_counted_when_asked_are_those_counted_at_each_round(
    history: list[tuple[object, ...]],
) -> None:
    lazy, eager = World(DiskLedger()), World(EagerLedger())
    for op in history:
        lazy.apply(op)
        eager.apply(op)
        assert lazy.driver.inventory() == eager.driver.inventory(), op
    assert lazy.accounts() == eager.accounts()


def test_a_round_looks_only_at_the_vms_it_must_watch() -> None:
    """Running VMs whose copies are all up and steady cost a round nothing; their writes are
    counted when asked for."""
    world = World(DiskLedger())
    run_now(world.driver.start(spec("vm-1", ["h1", "h2"]), 1))
    run_now(world.driver.start(spec("vm-2", ["h2", "h3"]), 1))
    driver = world.driver
    world.apply(("look", "vm-1", 1))
    assert driver.watched() == set()
    assert world.ledger.count("vm-2-d2", "h3") == 1, "counted when asked for"
    world.ledger.host_gone("h3")
    world.apply(("look", "vm-1", 1))
    assert driver.watched() == {"vm-2"}, "a copy on a gone host: its writes fail, and are shown"
    [vm2] = [vm for vm in driver.inventory() if vm.name == "vm-2"]
    assert vm2.disks[0].failed == ["h3"]
