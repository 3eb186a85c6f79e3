"""The fake driver's disk ledger in files: what one agent's VM writes to its disk's copies, and
what it acknowledged, is seen by the other agents (other processes, the same data directory)
and by the chaos observer, as real storage would be; a copy filled from another starts from
its content, a restarted agent finds its copies again, a lost host's copies are gone."""

from __future__ import annotations

from pathlib import Path

from common.messages import ObservedState
from common.replica_messages import ConfigureReplicas, ReplicaSpec
from hostagent.drivers.fake import FakeDriver
from hostagent.drivers.fakeledger import FileLedger, read_acknowledged, read_copies
from hostagent.drivers.fakequorum import WRITE_EVERY_S
from hostagent.replicasim import SimulatedReplicas
from tests.unit.hostagent.conftest import FakeClock
from tests.unit.hostagent.syncagent import ROOMY, run_now
from tests.unit.hostagent.test_fake_replicas import DISK, ref, set_replicas, spec


def running_on_h1(root: Path, clock: FakeClock, *hosts: str) -> FakeDriver:
    """A VM on h1 whose disk has copies on ``hosts`` (made by their own agents)."""
    for host in hosts:
        FileLedger(root=root, host_id=host).made(DISK, host)
    ledger = FileLedger(root=root, host_id="h1")
    driver = FakeDriver(ROOMY, clock_s=clock.monotonic_s, ledger=ledger, join_mib_s=100.0)
    run_now(driver.start(spec(*hosts), 1))
    return driver


def look(driver: FakeDriver, clock: FakeClock) -> None:
    """The agent looks at its VMs a write's interval after it last did."""
    clock.now_s += WRITE_EVERY_S
    driver.inventory()


def test_writes_and_acknowledgements_are_seen_from_another_process(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    driver = running_on_h1(tmp_path, clock, "h1", "h2")
    for _ in range(5):
        look(driver, clock)
    other = FileLedger(root=tmp_path, host_id="h2")  # h2's agent, another process
    assert (other.count(DISK, "h1"), other.count(DISK, "h2")) == (5, 5)
    assert read_copies(tmp_path) == {DISK: {"h1": 5, "h2": 5}}
    assert read_acknowledged(tmp_path) == {DISK: 5}


def test_acknowledgements_of_every_run_of_the_vm_add_up(tmp_path: Path) -> None:
    """A restarted agent (a new process) and a VM started again elsewhere keep counting: the
    disk's acknowledged writes are those of all its runs."""
    clock = FakeClock(100.0)
    first = running_on_h1(tmp_path, clock, "h1", "h2")
    for _ in range(3):
        look(first, clock)
    again = running_on_h1(tmp_path, clock, "h1", "h2")  # h1's agent restarted
    look(again, clock)
    elsewhere = FakeDriver(
        ROOMY, clock_s=clock.monotonic_s, ledger=FileLedger(root=tmp_path, host_id="h3")
    )
    run_now(elsewhere.start(spec("h2"), 2))
    look(elsewhere, clock)
    assert read_acknowledged(tmp_path) == {DISK: 5}
    assert read_copies(tmp_path) == {DISK: {"h1": 4, "h2": 5}}


def test_a_copy_is_filled_from_its_source(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    driver = running_on_h1(tmp_path, clock, "h1")
    for _ in range(7):
        look(driver, clock)
    copy = ReplicaSpec(disk_id=DISK, vm="vm-1", kind="data", size_mib=100, fill_from=ref("h1"))
    ledger = FileLedger(root=tmp_path, host_id="h3")
    sim = SimulatedReplicas(clock.monotonic_s, 1000.0, ledger=ledger, host_id="h3")
    sim.apply_now(ConfigureReplicas(replicas=[copy], digest="a"))
    clock.now_s += 1.0
    sim.statuses()
    assert ledger.count(DISK, "h3") == 7
    look(driver, clock)  # h3 is not in the VM's quorum: it takes none of its writes
    assert read_copies(tmp_path)[DISK] == {"h1": 8, "h3": 7}
    sim.apply_now(ConfigureReplicas(replicas=[], digest="b"))
    assert read_copies(tmp_path)[DISK] == {"h1": 8}


def test_a_restarted_agent_finds_its_copies_as_they_were(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    copy = ReplicaSpec(disk_id=DISK, vm="vm-1", kind="data", size_mib=100)
    config = ConfigureReplicas(replicas=[copy], digest="a")

    def h2_agent() -> SimulatedReplicas:
        ledger = FileLedger(root=tmp_path, host_id="h2")
        sim = SimulatedReplicas(clock.monotonic_s, ledger=ledger, host_id="h2")
        sim.apply_now(config)
        sim.statuses()
        return sim

    h2_agent()
    driver = running_on_h1(tmp_path, clock, "h1", "h2")
    for _ in range(3):
        look(driver, clock)
    h2_agent()  # killed and started again: its replica server kept the copy
    assert read_copies(tmp_path)[DISK] == {"h1": 3, "h2": 3}


def test_a_joining_copy_comes_in_with_what_the_others_hold(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    driver = running_on_h1(tmp_path, clock, "h1")
    look(driver, clock)
    FileLedger(root=tmp_path, host_id="h3").made(DISK, "h3")
    run_now(driver.set_disk_replicas(set_replicas("h1", joining=("h3",))))
    clock.now_s += 4.0  # 400 MiB at 100 MiB/s
    look(driver, clock)
    assert read_copies(tmp_path)[DISK] == {"h1": 2, "h3": 2}


def test_a_lost_host_takes_its_copies_and_stops_the_writes_to_them(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    driver = running_on_h1(tmp_path, clock, "h1", "h2")
    look(driver, clock)
    FileLedger(root=tmp_path, host_id="h2").host_gone("h2")  # seen from h2's side
    clock.now_s += WRITE_EVERY_S
    [vm] = driver.inventory()
    assert (vm.state, vm.disks[0].failed) == (ObservedState.RUNNING, ["h2"])
    assert read_copies(tmp_path) == {DISK: {"h1": 2}}
    assert read_acknowledged(tmp_path) == {DISK: 1}, "the write h2 missed was not acknowledged"
