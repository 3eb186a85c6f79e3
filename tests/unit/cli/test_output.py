"""Output formatting of the CLI: pure functions from values to text."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from cli import output
from common import messages as m
from common.image_messages import ImageInfo, ImageState
from common.replica_messages import ReplicaInfo
from common.resources import Resources
from common.usage_messages import SizeUsage, UsageReport, VmUsage

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_vm(name: str, **changes: object) -> m.VmInfo:
    vm = m.VmInfo(
        name=name,
        size="Small",
        cpu_milli=1000,
        mem_mib=1792,
        image="tiny",
        region=None,
        availability_set=None,
        state=m.VmState.RUNNING,
        host="host-1",
        generation=1,
        reason="",
        created_at=T0,
        updated_at=T0,
    )
    return msgspec.structs.replace(vm, **changes)


def make_host(host_id: str, **changes: object) -> m.HostInfo:
    host = m.HostInfo(
        host_id=host_id,
        state=m.HostState.UP,
        cordoned=False,
        region="local",
        fault_domain="fd-1",
        labels={},
        capacity=Resources(16000, 65536),
        allocated=Resources(4500, 12544),
        vms=3,
        fenced=False,
        driver="fake",
        last_heartbeat_age_s=0.42,
    )
    return msgspec.structs.replace(host, **changes)


def test_table_aligns_columns_without_trailing_spaces() -> None:
    text = output.table(("A", "LONGER"), [("xyz", "1"), ("q", "")])
    assert text.splitlines() == ["A    LONGER", "xyz  1", "q"]


def test_table_with_no_rows_is_just_the_header() -> None:
    assert output.table(("NAME", "STATE"), []) == "NAME  STATE"


@pytest.mark.parametrize(
    ("cpu_milli", "text"), [(250, "0.25"), (1000, "1"), (16000, "16"), (4500, "4.5")]
)
def test_cores(cpu_milli: int, text: str) -> None:
    assert output.cores(cpu_milli) == text


@pytest.mark.parametrize(
    ("mem_mib", "text"), [(768, "0.75"), (1792, "1.75"), (65536, "64"), (1000, "0.98")]
)
def test_gib(mem_mib: int, text: str) -> None:
    assert output.gib(mem_mib) == text


def test_vm_table_sorts_by_name_and_dashes_missing_values() -> None:
    vms = [
        make_vm("web-2", state=m.VmState.PENDING, host=None, generation=0, reason="no host fits"),
        make_vm("web-1", region="west"),
    ]
    lines = output.vm_table(vms).splitlines()
    assert lines[0].split() == list(output.VM_COLUMNS)
    assert lines[1].split() == ["web-1", "Small", "running", "host-1", "1", "west", "-", "-"]
    assert lines[2].split()[:7] == ["web-2", "Small", "pending", "-", "0", "-", "-"]
    assert lines[2].endswith("no host fits")


def test_host_table_shows_allocation_over_capacity() -> None:
    lines = output.host_table([make_host("host-2"), make_host("host-1")]).splitlines()
    assert lines[0].split() == list(output.HOST_COLUMNS)
    assert lines[1].split() == [
        "host-1", "up", "local", "fd-1", "4.5/16", "12.25/64", "0/-", "0", "3", "0.4s"
    ]  # fmt: skip
    assert lines[2].startswith("host-2")


@pytest.mark.parametrize(
    ("changes", "state"),
    [
        ({}, "up"),
        ({"state": m.HostState.DOWN}, "down"),
        ({"cordoned": True}, "up,cordoned"),
        ({"cordoned": True, "draining": True, "drain_remaining": 3}, "up,cordoned,draining(3)"),
        ({"fenced": True}, "up,fenced"),
    ],
    ids=["up", "down", "cordoned", "draining", "fenced"],
)
def test_host_state(changes: dict[str, object], state: str) -> None:
    assert output.host_state(make_host("host-1", **changes)) == state


@pytest.mark.parametrize(
    ("age_s", "text"), [(None, "-"), (0.04, "0.0s"), (59.9, "59.9s"), (600, "10m"), (7200, "2h")]
)
def test_age(age_s: float | None, text: str) -> None:
    assert output.age(age_s) == text


def test_size_table() -> None:
    sizes = [m.Size("ExtraSmall", 250, 768), m.Size("A7", 8000, 57344)]
    assert output.size_table(sizes).splitlines() == [
        "NAME        CORES  MEM",
        "ExtraSmall  0.25   0.75",
        "A7          8      56",
    ]


def test_vm_details_lists_every_field() -> None:
    text = output.vm_details(make_vm("web-1", availability_set="web"))
    assert "name:             web-1" in text
    assert "size:             Small (1 core, 1.75 GiB)" in text
    assert "availability set: web" in text
    assert "reason:           -" in text
    assert "created:          2025-01-02T03:04:05+00:00" in text


def test_json_is_one_document_of_the_structs() -> None:
    vms = [make_vm("a"), make_vm("b")]
    decoded = msgspec.json.decode(output.to_json(vms), type=list[m.VmInfo])
    assert decoded == vms


@pytest.mark.parametrize(
    ("code", "detail", "line"),
    [
        ("not_found", "vm 'x' does not exist", "error: not_found: vm 'x' does not exist"),
        ("invalid_request", "bad\nbody  here", "error: invalid_request: bad body here"),
        ("unavailable", "", "error: unavailable"),
    ],
)
def test_error_line_is_a_single_line(code: str, detail: str, line: str) -> None:
    assert output.error_line(code, detail) == line


def test_state_summary_counts_states_with_reasons() -> None:
    vms = [
        make_vm("a"),
        make_vm("b"),
        make_vm("c", state=m.VmState.PENDING, reason="insufficient_cpu 3"),
    ]
    assert output.state_summary(vms) == "pending 1 (insufficient_cpu 3), running 2"
    assert output.state_summary([]) == "no VMs"


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([3.0], 0.5, 3.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0), ([5.0, 1.0, 3.0], 0.5, 3.0)],
)
def test_percentile_nearest_rank(values: list[float], fraction: float, expected: float) -> None:
    assert output.percentile(values, fraction) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        output.percentile([], 0.5)


def test_recovery_report_has_a_row_per_vm_and_the_summary() -> None:
    recoveries = [
        output.Recovery("a", "host-2", "host-3", 2, 6.1),
        output.Recovery("b", "host-2", "host-1", 2, 6.3),
        output.Recovery("c", "host-2", "host-3", 3, 7.0),
    ]
    lines = output.recovery_report(recoveries).splitlines()
    assert lines[0].split() == ["NAME", "FROM", "TO", "GEN", "RECOVERED"]
    assert lines[2].split() == ["b", "host-2", "host-1", "2", "6.30s"]
    assert lines[-1] == "3 VMs moved; recovery after the kill: p50 6.30s, max 7.00s"


def test_usage_report() -> None:
    report = UsageReport(
        since=T0,
        until=T0.replace(hour=5),
        vms=[
            VmUsage(
                name="web-1", size="Small", held_s=7200.0, hours=2, price_per_hour=0.06, cost=0.12
            )
        ],
        sizes=[
            SizeUsage(size="Small", vms=1, held_s=7200.0, hours=2, price_per_hour=0.06, cost=0.12)
        ],
        hours=2,
        cost=0.12,
    )
    text = output.usage_report(report)
    assert text.splitlines()[0] == "usage 2025-01-02T03:04:05+00:00 .. 2025-01-02T05:04:05+00:00"
    assert "web-1  Small  2      0.06     0.12" in text
    assert "Small  1    2      0.06     0.12" in text
    assert text.endswith("total: 2 hours, cost 0.12")


def make_image(name: str, **changes: object) -> ImageInfo:
    image = ImageInfo(
        name=name,
        version=1,
        os="linux",
        format="raw",
        size_bytes=1536 * 1024,
        sha256="0" * 64,
        state=ImageState.AVAILABLE,
        created_at=T0,
    )
    return msgspec.structs.replace(image, **changes)


def test_image_table_says_where_each_image_comes_from() -> None:
    images = [
        make_image("tiny", builtin=True, size_bytes=0, format="qcow2"),
        make_image("snap", source_vm="web-1", state=ImageState.FAILED, reason="no disk"),
        make_image("base"),
    ]
    lines = output.image_table(images).splitlines()
    assert lines[0].split() == list(output.IMAGE_COLUMNS)
    assert lines[1].split() == [
        "base",
        "1",
        "available",
        "linux",
        "raw",
        "1.5",
        "MiB",
        "upload",
        "-",
    ]
    assert lines[2].split()[-4:] == ["vm", "web-1", "no", "disk"]
    assert lines[3].split() == ["tiny", "1", "available", "linux", "qcow2", "-", "builtin", "-"]


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_size_bytes(count: int, text: str) -> None:
    assert output.size_bytes(count) == text


def test_vm_details_lists_disks() -> None:
    disks = [
        m.DiskInfo(disk_id="web-1-os", kind=m.DiskKind.OS, size_mib=0, image="tiny", host="h1"),
        m.DiskInfo(disk_id="web-1-d2", kind=m.DiskKind.DATA, size_mib=512),
    ]
    lines = output.vm_details(make_vm("web-1", disks=disks)).splitlines()
    assert lines[-2] == "disks:            web-1-os (os, image size from tiny, host_local on h1)"
    assert lines[-1] == "                  web-1-d2 (data, 0.5 GiB, host_local)"


@pytest.mark.parametrize(
    ("mib", "text"), [(0, "image"), (1024, "1G"), (512, "512M"), (1536, "1536M")]
)
def test_disk_sizes_print_as_they_are_typed(mib: int, text: str) -> None:
    assert output.disk_size(mib) == text


def test_vm_details_lists_each_copy_of_a_replicated_disk_and_how_it_stands() -> None:
    copies = [
        ReplicaInfo(host="h1", state="current"),
        ReplicaInfo(host="h3", state="joining", progress=0.4),
    ]
    disk = m.DiskInfo(
        disk_id="web-1-os",
        kind=m.DiskKind.OS,
        size_mib=0,
        image="tiny",
        storage=m.DiskStorage.REPLICATED,
        replicas=copies,
    )
    lines = output.vm_details(make_vm("web-1", disks=[disk])).splitlines()
    assert lines[-1].endswith("(os, image size from tiny, replicated: h1 current, h3 joining 40%)")
    listed = output.disk_table([make_vm("web-1", disks=[disk])]).splitlines()
    assert listed[1].split()[-1] == "h1,h3"
    assert '"replicas"' in output.disks_json([make_vm("web-1", disks=[disk])])


def test_host_table_shows_disk_space_and_replicas() -> None:
    host = msgspec.structs.replace(
        make_host("h1"), disk_capacity_mib=512_000, disk_used_mib=3_072, replicas=4
    )
    row = output.host_table([host]).splitlines()[1].split()
    assert row[6:8] == ["3/500", "4"]
