"""reconcile_host: desired against observed for one host, bucket by bucket, and as properties."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from common import codec
from common.ids import HostId, VmName
from common.messages import (
    DeleteVm,
    DiskKind,
    DiskStorage,
    ObservedState,
    ObservedVm,
    ResumeVm,
    StartVm,
    StopVm,
    VmSpec,
    VmState,
)
from scheduler.core.context import command_key
from scheduler.core.reconciler import Outcome, reconcile_host, spec_of
from scheduler.state.model import VmRecord
from scheduler.state.storage import CopyRecord, DiskRecord, NicRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = HostId("h1")


def record(name: str = "a", state: VmState = VmState.RUNNING, generation: int = 2) -> VmRecord:
    return VmRecord(
        name=VmName(name),
        size="Small",
        cpu_milli=1000,
        mem_mib=1792,
        image="tiny",
        region=None,
        availability_set=None,
        state=state,
        host=H,
        generation=generation,
        created_at=T0,
        updated_at=T0,
    )


def seen(
    name: str = "a",
    state: ObservedState = ObservedState.RUNNING,
    generation: int = 2,
    retryable: bool = False,
) -> ObservedVm:
    return ObservedVm(
        name=name,
        generation=generation,
        state=state,
        cpu_milli=1000,
        mem_mib=1792,
        reason="boom" if state is ObservedState.FAILED else "",
        retryable=retryable,
    )


CASES = [
    ("scheduled-not-yet-seen", record(state=VmState.SCHEDULED), None, [], ["start_vm"]),
    (
        "scheduled-now-starting",
        record(state=VmState.SCHEDULED),
        seen(state=ObservedState.STARTING),
        [Outcome.STARTING],
        [],
    ),
    ("starting-now-running", record(state=VmState.STARTING), seen(), [Outcome.RUNNING], []),
    ("running-and-running", record(), seen(), [], []),
    ("running-vanished", record(), None, [Outcome.VANISHED], ["start_vm"]),
    (
        "running-but-paused-current-gen",
        record(),
        seen(state=ObservedState.PAUSED),
        [],
        ["resume_vm"],
    ),
    (
        "running-but-only-older-gen-there",
        record(),
        seen(generation=1),
        [Outcome.VANISHED],
        ["start_vm"],
    ),
    ("newer-gen-there-is-not-ours", record(), seen(generation=3), [], ["delete_vm"]),
    (
        "start-failed",
        record(state=VmState.STARTING),
        seen(state=ObservedState.FAILED),
        [Outcome.START_FAILED],
        ["delete_vm"],
    ),
    ("stopping-still-there", record(state=VmState.STOPPING), seen(), [], ["stop_vm"]),
    ("stopping-gone", record(state=VmState.STOPPING), None, [Outcome.STOPPED], []),
    ("deleting-still-there", record(state=VmState.DELETING), seen(), [], ["delete_vm"]),
    ("deleting-gone", record(state=VmState.DELETING), None, [Outcome.DELETED], []),
]


@pytest.mark.parametrize(
    ("desired", "observed", "outcomes", "kinds"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bucket(
    desired: VmRecord, observed: ObservedVm | None, outcomes: list[Outcome], kinds: list[str]
) -> None:
    result = reconcile_host(H, {desired.name: desired}, {VmName("a"): observed} if observed else {})
    assert [t.outcome for t in result.transitions] == outcomes
    assert [type(c).__struct_config__.tag for c in result.commands] == kinds
    assert len(result.orphans) == (1 if observed and observed.generation > 2 else 0)


def test_host_back_with_stale_vms_gets_them_destroyed_never_resumed() -> None:
    stale = {VmName("x"): seen("x", ObservedState.PAUSED, 1), VmName("y"): seen("y", generation=3)}
    result = reconcile_host(H, {}, stale)
    assert result.commands == [DeleteVm(name="x", generation=1), DeleteVm(name="y", generation=3)]
    assert {o.name for o in result.orphans} == {"x", "y"}
    assert result.transitions == []


names = st.sampled_from(["a", "b", "c", "d"])
states = st.sampled_from(list(VmState))
observed_states = st.sampled_from(list(ObservedState))
gens = st.integers(min_value=1, max_value=4)


@settings(max_examples=300, deadline=None)
@given(
    desired=st.dictionaries(names, st.tuples(states, gens), max_size=4),
    observed=st.dictionaries(names, st.tuples(observed_states, gens), max_size=4),
)
def test_properties(
    desired: dict[str, tuple[VmState, int]], observed: dict[str, tuple[ObservedState, int]]
) -> None:
    assigned = {
        VmName(n): record(n, s, g)
        for n, (s, g) in desired.items()
        if s
        in (
            VmState.SCHEDULED,
            VmState.STARTING,
            VmState.RUNNING,
            VmState.STOPPING,
            VmState.DELETING,
        )
    }
    inventory = {VmName(n): seen(n, s, g) for n, (s, g) in observed.items()}
    result = reconcile_host(H, assigned, inventory)
    for cmd in result.commands:
        name = command_key(cmd)
        mine = assigned.get(VmName(name))
        if isinstance(cmd, ResumeVm):
            # Only the current generation of a VM wanted running here is ever resumed.
            assert mine is not None and cmd.generation == mine.generation
            assert mine.state in (VmState.SCHEDULED, VmState.STARTING, VmState.RUNNING)
        if isinstance(cmd, StartVm):
            assert mine is not None and cmd.generation == mine.generation
        if isinstance(cmd, DeleteVm) and mine is not None and mine.state is not VmState.DELETING:
            # A VM wanted here is destroyed only when its start failed, or the copy is not ours.
            there = inventory[VmName(name)]
            assert there.state is ObservedState.FAILED or there.generation != mine.generation
        if isinstance(cmd, StopVm):
            assert mine is not None and mine.state is VmState.STOPPING
    # Every VM on the host that is not assigned to it is destroyed at the generation it has.
    for name, vm in inventory.items():
        if name not in assigned:
            assert DeleteVm(name=name, generation=vm.generation) in result.commands
    # Each VM gets at most one command per pass.
    targets = [command_key(c) for c in result.commands]
    assert len(targets) == len(set(targets))


def test_a_vm_its_host_cannot_reach_is_waited_on_never_started_again() -> None:
    """An agent reports a QEMU it found but cannot talk to as ``starting`` (with the reason):
    the scheduler must not start, delete or re-place it while that copy may still execute."""
    unreachable = seen(state=ObservedState.STARTING)
    unreachable.reason = "qemu unreachable: QMP greeting timed out"
    for state in (VmState.RUNNING, VmState.STARTING, VmState.SCHEDULED):
        result = reconcile_host(H, {VmName("a"): record(state=state)}, {VmName("a"): unreachable})
        assert result.commands == [] and result.orphans == []
        assert all(t.outcome is Outcome.STARTING for t in result.transitions)


OS_DISK = {
    "size_mib": 0,
    "image": "tiny",
    "image_sha256": "ab",
    "storage": "host_local",
    "replicas": [],
}
DATA_DISK = {
    "size_mib": 64,
    "image": "",
    "image_sha256": "",
    "storage": "host_local",
    "replicas": [],
}


def test_the_start_command_carries_the_spec_fields_and_disks_and_nothing_else() -> None:
    os_disk = DiskRecord(disk_id="a-os", kind=DiskKind.OS, image="tiny", image_sha256="ab", host=H)
    data = DiskRecord(disk_id="a-data0", kind=DiskKind.DATA, size_mib=64, host=H)
    vm = msgspec.structs.replace(record(), disks=[os_disk, data], reason="x", start_attempts=3)
    wire = msgspec.json.decode(codec.encode(StartVm(vm=spec_of(vm), generation=2)))
    assert wire["vm"] == {
        "name": "a",
        "size": "Small",
        "cpu_milli": 1000,
        "mem_mib": 1792,
        "image": "tiny",
        "disks": [
            {"disk_id": "a-os", "kind": "os", **OS_DISK},
            {"disk_id": "a-data0", "kind": "data", **DATA_DISK},
        ],
        "nics": [],
    }
    assert isinstance(spec_of(vm), VmSpec)


def test_the_spec_is_every_field_the_records_share_with_it_by_name() -> None:
    """``spec_of`` builds the spec field by field: it is what converting the record by
    attribute names gives, for a VM with every kind of disk and a NIC (a field added to the
    spec and the record alike must not be left out)."""
    disks = [
        DiskRecord(disk_id="a-os", kind=DiskKind.OS, image="tiny", image_sha256="ab", host=H),
        DiskRecord(disk_id="a-d2", kind=DiskKind.DATA, size_mib=64, host=H, image_mib=3),
        DiskRecord(
            disk_id="a-d3",
            kind=DiskKind.DATA,
            size_mib=32,
            storage=DiskStorage.REPLICATED,
            copies=[CopyRecord(host=H, made=True)],
        ),
    ]
    nic = NicRecord(
        index=0,
        vnet="front",
        vni=4097,
        mac="02:00:0a:01:00:0a",
        ip="10.1.0.10",
        prefix_len=24,
        gateway="10.1.0.1",
    )
    vm = msgspec.structs.replace(record(), disks=disks, nics=[nic])
    assert spec_of(vm) == msgspec.convert(vm, VmSpec, from_attributes=True)
