"""The fake driver keeps its accounts as it goes (what its VMs take, its inventory, the index
the agent looks VMs up in): after any sequence of operations they equal the accounts computed
from scratch, so a simulated host stays as honest as before while a command costs the same on
a full host as on an empty one."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings, strategies as st

from common.errors import DriverError
from common.messages import DiskKind, DiskSpec, ObservedState, ObservedVm, VmSpec
from common.replica_messages import ReplicaRef, SetDiskReplicas
from common.resources import Resources
from common.spec_messages import DiskStorage
from hostagent.drivers.base import IncomingEndpoint
from hostagent.drivers.fake import FakeDriver, MigrationModel
from hostagent.drivers.fakequorum import WRITE_EVERY_S, DiskLedger
from hostagent.vmcommands import Inventory, find
from tests.unit.hostagent.conftest import FakeClock, make_spec
from tests.unit.hostagent.syncagent import run_now

NAMES = ("vm-1", "vm-2", "vm-3", "vm-4")
HOSTS = ("h1", "h2", "h3")
TARGET = IncomingEndpoint("10.0.0.2", 49152, 49153)


def ref(host: str) -> ReplicaRef:
    return ReplicaRef(host=host, address="10.0.0.1", port=10809)


def spec(name: str, cpu_milli: int, mem_mib: int, replicas: tuple[str, ...]) -> VmSpec:
    if not replicas:
        return make_spec(name, cpu_milli=cpu_milli, mem_mib=mem_mib)
    disk = DiskSpec(
        disk_id=f"{name}-data-1", kind=DiskKind.DATA, size_mib=100,
        storage=DiskStorage.REPLICATED, replicas=[ref(h) for h in replicas],
    )  # fmt: skip
    return VmSpec(
        name=name, size="S", cpu_milli=cpu_milli, mem_mib=mem_mib, image="tiny", disks=[disk]
    )


names = st.sampled_from(NAMES)
hosts = st.lists(st.sampled_from(HOSTS), max_size=3, unique=True).map(tuple)
steps = st.one_of(
    st.tuples(
        st.just("start"),
        names,
        st.integers(1, 3),
        st.sampled_from((500, 1000, 2000)),
        st.sampled_from((512, 1024, 2048)),
        hosts,
    ),
    st.tuples(st.sampled_from(("stop", "destroy", "pause", "resume", "finish", "migrate")), names),
    st.tuples(st.just("incoming"), names, st.integers(1, 3), st.sampled_from((512, 1024))),
    st.tuples(st.just("replicas"), names, hosts, hosts),
    st.tuples(st.just("gone"), st.sampled_from(HOSTS)),
    st.tuples(st.just("time"), st.sampled_from((0.0, WRITE_EVERY_S, 1.0))),
)


async def apply(driver: FakeDriver, clock: FakeClock, step: tuple[object, ...]) -> None:
    match step:
        case ("start", str(name), int(gen), int(cpu), int(mem), tuple(replicas)):
            await driver.start(spec(name, cpu, mem, replicas), gen)
        case ("stop", str(name)):
            await driver.stop(name)
        case ("destroy", str(name)):
            await driver.destroy(name)
        case ("pause", str(name)):
            await driver.pause(name)
        case ("resume", str(name)):
            await driver.resume(name)
        case ("finish", str(name)):
            await driver.finish_incoming(name)
        case ("migrate", str(name)):
            await driver.migrate_out(name, TARGET, max_downtime_ms=300, max_bandwidth_mib_s=0)
        case ("incoming", str(name), int(gen), int(mem)):
            await driver.prepare_incoming(spec(name, 1000, mem, ()), gen, "10.0.0.1")
        case ("replicas", str(name), tuple(kept), tuple(joining)):
            held = next((vm for vm in driver.inventory() if vm.name == name), None)
            generation = held.generation if held is not None else 1
            command = SetDiskReplicas(
                name=name, generation=generation, disk_id=f"{name}-data-1",
                replicas=[ref(h) for h in kept], joining=[ref(h) for h in joining],
            )  # fmt: skip
            await driver.set_disk_replicas(command)
        case ("gone", str(host)):
            driver.ledger.host_gone(host)
        case ("time", float(step_s)):
            clock.now_s += step_s
        case _:
            raise AssertionError(step)


def check(driver: FakeDriver, capacity: Resources) -> None:
    inventory = driver.inventory()
    allocated, recounted = driver.recount()
    assert inventory == recounted
    assert driver.allocated() == allocated
    assert allocated.mem_mib <= capacity.mem_mib and allocated.cpu_milli <= capacity.cpu_milli
    assert isinstance(inventory, Inventory)
    for name in NAMES:  # the index finds what a scan finds
        assert find(inventory, name) == next((vm for vm in recounted if vm.name == name), None)


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=40))
def test_kept_accounts_equal_a_recount(script: list[tuple[object, ...]]) -> None:
    capacity = Resources(4000, 4096)
    clock = FakeClock()
    ledger = DiskLedger()
    for host in HOSTS:
        for name in NAMES:
            ledger.made(f"{name}-data-1", host)
    driver = FakeDriver(
        capacity,
        migration=MigrationModel(setup_s=0.0, bandwidth_mib_s=float("inf")),
        clock_s=clock.monotonic_s,
        ledger=ledger,
    )
    for step in script:
        with contextlib.suppress(DriverError):  # refused (no room, not held...): still honest
            run_now(apply(driver, clock, step))
        check(driver, capacity)
    run_now(driver.close())
    assert driver.allocated() == Resources() and driver.inventory() == []


async def test_inventory_is_the_same_list_until_a_vm_changes() -> None:
    driver = FakeDriver(Resources(4000, 4096))
    await driver.start(make_spec("vm-1"), 1)
    first = driver.inventory()
    assert driver.inventory() is first
    await driver.pause("vm-1")
    paused = driver.inventory()
    assert paused is not first
    assert [(vm.name, vm.state) for vm in first] == [("vm-1", ObservedState.RUNNING)]
    assert [(vm.name, vm.state) for vm in paused] == [("vm-1", ObservedState.PAUSED)]


def test_find_looks_up_a_plain_list_as_an_inventory() -> None:
    driver = FakeDriver(Resources(4000, 4096))
    for name in ("vm-1", "vm-2"):
        run_now(driver.start(make_spec(name), 1))
    inventory = driver.inventory()
    plain: list[ObservedVm] = list(inventory)
    assert find(plain, "vm-2") is find(inventory, "vm-2") is inventory[1]
    assert find(plain, "vm-9") is None and find(inventory, "vm-9") is None
