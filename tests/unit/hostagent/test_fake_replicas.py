"""The fake driver's replicated disks: every running VM's write lands on each copy it writes
to, a copy whose host is gone stops the VM's acknowledged writes (reported failed, the VM still
running) until SetDiskReplicas drops it, and a joining copy comes in after its size at the join
rate with every write the others have: no copy in step is ever behind an acknowledged write."""

from __future__ import annotations

import pytest

from common.errors import DriverError
from common.messages import DiskKind, DiskSpec, ObservedState, StartVm, VmSpec
from common.replica_messages import (
    ConfigureReplicas,
    DiskReplicas,
    ReplicaRef,
    ReplicaSpec,
    SetDiskReplicas,
)
from common.spec_messages import DiskStorage
from hostagent.drivers.fake import FakeDriver
from hostagent.drivers.fakequorum import WRITE_EVERY_S, DiskLedger
from hostagent.replicasim import SimulatedReplicas
from hostagent.stimuli import AckReceived
from tests.unit.hostagent.conftest import FakeClock, ack_for, make_state
from tests.unit.hostagent.syncagent import ROOMY, SyncAgent, run_now

DISK = "vm-1-data-1"


def ref(host: str) -> ReplicaRef:
    return ReplicaRef(host=host, address="10.0.0.1", port=10809)


def spec(*hosts: str) -> VmSpec:
    disk = DiskSpec(
        disk_id=DISK, kind=DiskKind.DATA, size_mib=400, storage=DiskStorage.REPLICATED,
        replicas=[ref(h) for h in hosts],
    )  # fmt: skip
    return VmSpec(name="vm-1", size="S", cpu_milli=1000, mem_mib=512, image="tiny", disks=[disk])


def set_replicas(*hosts: str, joining: tuple[str, ...] = ()) -> SetDiskReplicas:
    return SetDiskReplicas(
        name="vm-1", generation=1, disk_id=DISK, replicas=[ref(h) for h in hosts],
        joining=[ref(h) for h in joining],
    )  # fmt: skip


def disk_of(driver: FakeDriver) -> tuple[ObservedState, DiskReplicas]:
    [vm] = driver.inventory()
    return vm.state, vm.disks[0]


def never_behind(ledger: DiskLedger, driver: FakeDriver) -> None:
    """Every copy the VM writes to has at least every write the guest had acknowledged."""
    [vm] = driver._vms.values()
    assert vm.quorums is not None
    for disk in vm.quorums.disks:
        for host in disk.members:
            assert (ledger.count(disk.disk_id, host) or 0) >= disk.acked, (host, disk)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


def started(clock: FakeClock, ledger: DiskLedger, *hosts: str) -> FakeDriver:
    driver = FakeDriver(ROOMY, clock_s=clock.monotonic_s, ledger=ledger, join_mib_s=100.0)
    for host in hosts:
        ledger.made(DISK, host)
    run_now(driver.start(spec(*hosts), 1))
    return driver


def look(driver: FakeDriver, clock: FakeClock, times: int) -> None:
    """The host looks at its VMs ``times`` times, a write's interval apart."""
    for _ in range(times):
        clock.now_s += WRITE_EVERY_S
        driver.inventory()


def test_a_running_vm_writes_by_its_clock_not_by_how_often_it_is_looked_at(
    clock: FakeClock,
) -> None:
    ledger = DiskLedger()
    driver = started(clock, ledger, "h1", "h2")
    look(driver, clock, 1)
    for _ in range(10):
        driver.inventory()
    assert ledger.writes[DISK] == {"h1": 1, "h2": 1}
    look(driver, clock, 2)
    assert ledger.writes[DISK] == {"h1": 3, "h2": 3}


def test_a_gone_copy_stops_acknowledged_writes_until_it_is_dropped(clock: FakeClock) -> None:
    ledger = DiskLedger()
    driver = started(clock, ledger, "h1", "h2")
    look(driver, clock, 5)
    assert ledger.writes[DISK] == {"h1": 5, "h2": 5}
    ledger.host_gone("h2")
    clock.now_s += WRITE_EVERY_S
    state, disk = disk_of(driver)
    assert (state, disk.in_sync, disk.failed) == (ObservedState.RUNNING, ["h1", "h2"], ["h2"])
    look(driver, clock, 3)
    assert ledger.writes[DISK]["h1"] == 6, "the stopped VM writes nothing more"
    never_behind(ledger, driver)
    run_now(driver.set_disk_replicas(set_replicas("h1")))
    _, disk = disk_of(driver)
    assert (disk.in_sync, disk.failed) == (["h1"], [])
    assert ledger.writes[DISK]["h1"] > 6
    never_behind(ledger, driver)


def test_a_joining_copy_comes_in_after_its_size_at_the_join_rate(clock: FakeClock) -> None:
    ledger = DiskLedger()
    driver = started(clock, ledger, "h1")
    ledger.made(DISK, "h3")
    run_now(driver.set_disk_replicas(set_replicas("h1", joining=("h3",))))
    clock.now_s += 2.0  # 200 of 400 MiB at 100 MiB/s
    _, disk = disk_of(driver)
    assert disk.in_sync == ["h1"] and disk.joining == {"h3": pytest.approx(0.5)}
    clock.now_s += 2.0
    _, disk = disk_of(driver)
    assert (disk.in_sync, disk.joining) == (["h1", "h3"], {})
    look(driver, clock, 1)
    assert ledger.writes[DISK]["h3"] == ledger.writes[DISK]["h1"]
    never_behind(ledger, driver)


def test_dropping_every_copy_is_refused_and_changes_nothing(clock: FakeClock) -> None:
    driver = started(clock, DiskLedger(), "h1", "h2")
    with pytest.raises(DriverError, match="no copy left"):
        run_now(driver.set_disk_replicas(set_replicas("h9")))
    assert disk_of(driver)[1].in_sync == ["h1", "h2"]


def test_a_filled_replica_enters_the_ledger_with_its_source_count() -> None:
    ledger = DiskLedger()
    ledger.made(DISK, "h1")
    ledger.writes[DISK]["h1"] = 42
    now = [0.0]
    sim = SimulatedReplicas(lambda: now[0], 100.0, ledger=ledger, host_id="h2")
    copy = ReplicaSpec(disk_id=DISK, vm="vm-1", kind="data", size_mib=100, fill_from=ref("h1"))
    sim.apply_now(ConfigureReplicas(replicas=[copy], digest="a"))
    sim.statuses()
    assert ledger.count(DISK, "h2") is None, "not before it is filled"
    now[0] = 1.0
    assert sim.statuses() == []
    assert ledger.count(DISK, "h2") == 42
    sim.apply_now(ConfigureReplicas(replicas=[], digest="b"))
    assert ledger.count(DISK, "h2") is None


def test_the_agent_carries_set_disk_replicas_to_the_fake_and_reports_the_disks() -> None:

    clock = FakeClock(100.0)
    driver = FakeDriver(ROOMY, clock_s=clock.monotonic_s)
    agent = SyncAgent(make_state(), driver=driver)
    agent.handle(AckReceived(ack_for(agent.heartbeat(100.0))), 100.0)
    agent.execute([StartVm(vm=spec("h1", "h2"), generation=1)], 100.0)
    agent.driver.ledger.host_gone("h2")
    clock.now_s += WRITE_EVERY_S  # the VM's next write finds the copy gone
    assert agent.heartbeat(100.1).vms[0].disks[0].failed == ["h2"]
    agent.execute([set_replicas("h1")], 100.2)
    [vm] = agent.heartbeat(100.3).vms
    assert (vm.state, vm.disks[0].in_sync, vm.disks[0].failed) == (
        ObservedState.RUNNING,
        ["h1"],
        [],
    )
