"""A VM as the API shows it: ``vm_info`` is built field by field (it answers every create), and
must show what the record holds, as the generic record -> wire conversion does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, strategies as st

from common.ids import HostId, VmName
from common.messages import DiskKind, DiskStorage, VmInfo, VmState
from common.migration_messages import MigrationCause, MigrationPhase
from common.network_messages import EndpointProtocol
from common.replica_messages import ReplicaInfo
from scheduler.core.views import vm_info
from scheduler.state.model import MigrationRecord, VmRecord
from scheduler.state.storage import (
    CopyRecord,
    CopyState,
    DiskRecord,
    EndpointRecord,
    NicRecord,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
hosts = st.sampled_from([HostId("h1"), HostId("h2"), HostId("h3")])
times = st.integers(0, 10**6).map(lambda s: EPOCH + timedelta(seconds=s))
copies = st.builds(
    CopyRecord,
    host=hosts,
    state=st.sampled_from(CopyState),
    progress=st.floats(0.0, 1.0),
)
disks = st.builds(
    DiskRecord,
    disk_id=st.text("abc-", min_size=1, max_size=8),
    kind=st.sampled_from(DiskKind),
    size_mib=st.integers(0, 10**6),
    image=st.sampled_from(["", "tiny"]),
    storage=st.sampled_from(DiskStorage),
    host=st.none() | hosts,
    copies=st.lists(copies, max_size=3),
)
nics = st.builds(
    NicRecord,
    index=st.integers(0, 3),
    vnet=st.sampled_from(["a", "b"]),
    vni=st.integers(1, 4000),
    ip=st.sampled_from(["", "10.0.0.5"]),
    mac=st.just("02:00:00:00:00:01"),
    prefix_len=st.integers(8, 30),
    gateway=st.just("10.0.0.1"),
)
endpoints = st.builds(
    EndpointRecord,
    vm_port=st.integers(1, 65535),
    protocol=st.sampled_from(EndpointProtocol),
    public_port=st.none() | st.integers(1024, 65535),
    address=st.none() | st.just("127.0.0.1"),
    allow=st.lists(st.sampled_from(["0.0.0.0/0", "10.0.0.0/8"]), max_size=2),
)
migrations = st.builds(
    MigrationRecord,
    source=hosts,
    target=hosts,
    attempt=st.integers(1, 5),
    cause=st.sampled_from(MigrationCause),
    phase=st.sampled_from(MigrationPhase),
    started_at=times,
    progress_at=times,
    transferred_mib=st.integers(0, 10**5),
    total_mib=st.integers(0, 10**5),
)
records = st.builds(
    VmRecord,
    name=st.just(VmName("web-1")),
    size=st.sampled_from(["Small", "Large"]),
    cpu_milli=st.integers(1, 64000),
    mem_mib=st.integers(1, 10**6),
    image=st.sampled_from(["tiny", "debian"]),
    region=st.none() | st.just("eu"),
    availability_set=st.none() | st.just("set-1"),
    state=st.sampled_from(VmState),
    host=st.none() | hosts,
    generation=st.integers(1, 100),
    reason=st.text(max_size=10),
    created_at=times,
    updated_at=times,
    disks=st.lists(disks, max_size=3),
    nics=st.lists(nics, max_size=2),
    endpoints=st.lists(endpoints, max_size=2),
    migration=st.none() | migrations,
)


def _converted(record: VmRecord) -> VmInfo:
    """The record through the generic conversion, its disks' copies shown as replicas (what
    ``vm_info`` did before it was built field by field)."""
    info = msgspec.convert(record, VmInfo, from_attributes=True)
    for shown, disk in zip(info.disks, record.disks, strict=True):
        shown.replicas = [
            ReplicaInfo(host=c.host, state=c.state.value, progress=c.progress) for c in disk.copies
        ]
    return info


@given(records)
def test_vm_info_shows_every_field_of_the_record(record: VmRecord) -> None:
    shown = msgspec.to_builtins(vm_info(record))
    expected = msgspec.to_builtins(_converted(record))
    assert shown == expected


@given(records)
def test_vm_info_shares_no_list_with_the_record(record: VmRecord) -> None:
    """A reply is encoded after the commit, while the core goes on changing its records."""
    info = vm_info(record)
    for endpoint, held in zip(info.endpoints, record.endpoints, strict=True):
        assert endpoint.allow is not held.allow
