"""How the CLI prints things: pure functions from values to text (tables, JSON, error lines)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from common import messages as m
from common.image_messages import ImageInfo
from common.network_messages import EndpointInfo, NicInfo, VnetInfo
from common.replica_messages import ReplicaInfo
from common.usage_messages import UsageReport

Row = Sequence[str]

VM_COLUMNS = ("NAME", "SIZE", "STATE", "HOST", "GEN", "REGION", "NETWORK/IP", "REASON")
HOST_COLUMNS = ("HOST", "STATE", "REGION", "FD", "CPU", "MEM", "DISK", "REPLICAS", "VMS", "AGE")
SIZE_COLUMNS = ("NAME", "CORES", "MEM")


def columns(rows: Sequence[Row], *, indent: str = "") -> str:
    """Left-aligned columns separated by two spaces; no trailing spaces."""
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))] if rows else []
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def table(header: Row, rows: Sequence[Row]) -> str:
    """A header line, then one aligned line per row."""
    return columns([header, *rows])


def cores(cpu_milli: int) -> str:
    """Millicores as cores: 250 -> ``0.25``, 16000 -> ``16``."""
    return f"{cpu_milli / 1000:g}"


def cores_phrase(cpu_milli: int) -> str:
    """``1 core``, ``0.25 cores``, ``2 cores``."""
    return f"{cores(cpu_milli)} core" + ("" if cpu_milli == 1000 else "s")


def gib(mem_mib: int) -> str:
    """MiB as GiB with at most two decimals: 1792 -> ``1.75``, 65536 -> ``64``."""
    return f"{round(mem_mib / 1024, 2):g}"


def _dash(value: str | None) -> str:
    return value if value else "-"


def vm_state(vm: m.VmInfo) -> str:
    """``running``, or ``running,migrating(copying->h2)`` while it moves live."""
    if vm.migration is None:
        return str(vm.state)
    return f"{vm.state},migrating({vm.migration.phase}->{vm.migration.target})"


def vm_row(vm: m.VmInfo) -> Row:
    return (
        vm.name,
        vm.size,
        vm_state(vm),
        _dash(vm.host),
        str(vm.generation),
        _dash(vm.region),
        network_cell(vm.nics),
        _dash(vm.reason),
    )


def network_cell(nics: Sequence[NicInfo]) -> str:
    """``front/10.1.0.2`` (the first NIC; ``+1`` per other NIC), ``front/-`` while it waits
    for an address, ``-`` without a NIC."""
    if not nics:
        return "-"
    first = f"{nics[0].vnet}/{_dash(nics[0].ip)}"
    return first if len(nics) == 1 else f"{first},+{len(nics) - 1}"


def vm_table(vms: Sequence[m.VmInfo]) -> str:
    return table(VM_COLUMNS, [vm_row(vm) for vm in sorted(vms, key=lambda vm: vm.name)])


def host_state(host: m.HostInfo) -> str:
    """``up`` or ``down``, plus ``,cordoned``, ``,draining(N)`` and ``,fenced`` if they apply."""
    flags = [str(host.state)]
    if host.cordoned:
        flags.append("cordoned")
    if host.draining:
        flags.append(f"draining({host.drain_remaining})")
    if host.fenced:
        flags.append("fenced")
    return ",".join(flags)


def age(age_s: float | None) -> str:
    if age_s is None:
        return "-"
    if age_s < 60:
        return f"{age_s:.1f}s"
    if age_s < 3600:
        return f"{age_s / 60:.0f}m"
    return f"{age_s / 3600:.0f}h"


def host_row(host: m.HostInfo) -> Row:
    return (
        host.host_id,
        host_state(host),
        host.region,
        host.fault_domain,
        f"{cores(host.allocated.cpu_milli)}/{cores(host.capacity.cpu_milli)}",
        f"{gib(host.allocated.mem_mib)}/{gib(host.capacity.mem_mib)}",
        disk_use(host),
        str(host.replicas),
        str(host.vms),
        age(host.last_heartbeat_age_s),
    )


def disk_use(host: m.HostInfo) -> str:
    """Disk space used / reported, in GiB (``-`` for a host that reports none)."""
    capacity = gib(host.disk_capacity_mib) if host.disk_capacity_mib else "-"
    return f"{gib(host.disk_used_mib)}/{capacity}"


def host_table(hosts: Sequence[m.HostInfo]) -> str:
    ordered = sorted(hosts, key=lambda host: host.host_id)
    return table(HOST_COLUMNS, [host_row(host) for host in ordered])


def size_table(sizes: Sequence[m.Size]) -> str:
    rows = [(size.name, cores(size.cpu_milli), gib(size.mem_mib)) for size in sizes]
    return table(SIZE_COLUMNS, rows)


def vm_details(vm: m.VmInfo) -> str:
    """``key: value`` lines for ``stratus vm show``."""
    fields: list[tuple[str, str]] = [
        ("name", vm.name),
        ("state", str(vm.state)),
        ("reason", _dash(vm.reason)),
        ("size", f"{vm.size} ({cores_phrase(vm.cpu_milli)}, {gib(vm.mem_mib)} GiB)"),
        ("image", vm.image),
        ("region", _dash(vm.region)),
        ("availability set", _dash(vm.availability_set)),
        ("host", _dash(vm.host)),
        ("generation", str(vm.generation)),
        ("created", vm.created_at.isoformat(timespec="seconds")),
        ("updated", vm.updated_at.isoformat(timespec="seconds")),
        *(("disks" if index == 0 else "", disk_line(disk)) for index, disk in enumerate(vm.disks)),
        *(("nics" if index == 0 else "", nic_line(nic)) for index, nic in enumerate(vm.nics)),
        *(
            ("endpoints" if index == 0 else "", endpoint_line(endpoint))
            for index, endpoint in enumerate(vm.endpoints)
        ),
    ]
    width = max(len(key) for key, _ in fields) + 1
    lines = [f"{(key + ':') if key else '':<{width}} {value}".rstrip() for key, value in fields]
    return "\n".join(lines)


def nic_line(nic: NicInfo) -> str:
    address = f"{nic.ip}/{nic.prefix_len}" if nic.ip else "no address yet"
    return f"{nic.vnet} {address} (gateway {nic.gateway}, mac {nic.mac})"


def endpoint_where(endpoint: EndpointInfo) -> str:
    """``192.0.2.1:20000/tcp``, or why it answers nowhere now."""
    if endpoint.public_port is None:
        return f"-/{endpoint.protocol} (not placed)"
    return f"{endpoint.address or '?'}:{endpoint.public_port}/{endpoint.protocol}"


def endpoint_line(endpoint: EndpointInfo) -> str:
    allow = f" (allow {', '.join(endpoint.allow)})" if endpoint.allow else ""
    return f"{endpoint_where(endpoint)} -> port {endpoint.vm_port}{allow}"


ENDPOINT_COLUMNS = ("VM PORT", "PROTO", "PUBLIC", "ADDRESS", "ALLOW")


def endpoint_table(vm: m.VmInfo) -> str:
    rows = [
        (
            str(e.vm_port),
            str(e.protocol),
            str(e.public_port) if e.public_port is not None else "-",
            _dash(e.address),
            ",".join(e.allow) or "any",
        )
        for e in sorted(vm.endpoints, key=lambda e: (e.vm_port, e.protocol))
    ]
    return table(ENDPOINT_COLUMNS, rows)


VNET_COLUMNS = ("NAME", "CIDR", "REGION", "VNI", "GATEWAY", "ADDRESSES", "VMS")


def vnet_table(vnets: Sequence[VnetInfo]) -> str:
    rows = [
        (
            v.name,
            v.cidr,
            _dash(v.region),
            str(v.vni),
            v.gateway,
            f"{v.addresses_used}/{v.addresses_total}",
            str(v.vms),
        )
        for v in sorted(vnets, key=lambda v: v.name)
    ]
    return table(VNET_COLUMNS, rows)


IMAGE_COLUMNS = ("NAME", "VERSION", "STATE", "OS", "FORMAT", "SIZE", "SOURCE", "REASON")


def size_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KiB``; binary units, at most one decimal."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def image_row(image: ImageInfo) -> Row:
    source = (
        "builtin" if image.builtin else (f"vm {image.source_vm}" if image.source_vm else "upload")
    )
    size = size_bytes(image.size_bytes) if image.size_bytes else "-"
    return (
        image.name,
        str(image.version),
        str(image.state),
        image.os,
        _dash(image.format),
        size,
        source,
        _dash(image.reason),
    )


def image_table(images: Sequence[ImageInfo]) -> str:
    ordered = sorted(images, key=lambda image: (image.name, image.version))
    return table(IMAGE_COLUMNS, [image_row(image) for image in ordered])


def disk_line(disk: m.DiskInfo) -> str:
    size = "image size" if disk.size_mib == 0 else f"{gib(disk.size_mib)} GiB"
    where = f" on {disk.host}" if disk.host else ""
    if disk.replicas:
        where = ": " + ", ".join(copy_phrase(copy) for copy in disk.replicas)
    image = f" from {disk.image}" if disk.image else ""
    return f"{disk.disk_id} ({disk.kind}, {size}{image}, {disk.storage}{where})"


def copy_phrase(copy: ReplicaInfo) -> str:
    """``h2 current``, ``h3 joining 40%``."""
    progress = f" {copy.progress:.0%}" if copy.progress else ""
    return f"{copy.host} {copy.state}{progress}"


DISK_COLUMNS = ("VM", "DISK", "KIND", "SIZE", "IMAGE", "STORAGE", "HOST")


def disk_size(size_mib: int) -> str:
    """A data disk's size as it is typed (``1G``, ``512M``); ``image`` for an OS disk."""
    if size_mib == 0:
        return "image"
    return f"{size_mib // 1024}G" if size_mib % 1024 == 0 else f"{size_mib}M"


def disk_table(vms: Sequence[m.VmInfo]) -> str:
    """``stratus disk list``: one line per disk, by VM name, each VM's OS disk first."""
    rows = [
        (
            vm.name,
            disk.disk_id,
            str(disk.kind),
            disk_size(disk.size_mib),
            _dash(disk.image),
            str(disk.storage),
            ",".join(copy.host for copy in disk.replicas) or _dash(disk.host),
        )
        for vm in sorted(vms, key=lambda vm: vm.name)
        for disk in vm.disks
    ]
    return table(DISK_COLUMNS, rows)


class VmDisk(msgspec.Struct, kw_only=True):
    """A disk with the VM it belongs to: ``stratus disk list -o json``."""

    vm: str
    disk_id: str
    kind: str
    size_mib: int
    image: str
    storage: str
    host: str | None
    replicas: list[ReplicaInfo] = []


def disks_json(vms: Sequence[m.VmInfo]) -> str:
    listed = [
        VmDisk(vm=vm.name, **msgspec.structs.asdict(disk))
        for vm in sorted(vms, key=lambda vm: vm.name)
        for disk in vm.disks
    ]
    return to_json(listed)


def to_json(value: object) -> str:
    """One JSON document (indented) for structs, lists of structs and plain values."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def error_line(code: str, detail: str) -> str:
    """The single line printed on stderr for a failed command."""
    detail = " ".join(detail.split())
    return f"error: {code}: {detail}" if detail else f"error: {code}"


def error_json(code: str, detail: str) -> str:
    """The failed command under ``-o json``: ``{"error": {"code": ..., "detail": ...}}`` on one
    line (the shape of the HTTP API's error bodies), printed on stderr like ``error_line``."""
    body = {"error": {"code": code, "detail": " ".join(detail.split())}}
    return msgspec.json.encode(body).decode()


def state_summary(vms: Sequence[m.VmInfo]) -> str:
    """``running 10, pending 2 (insufficient_cpu)``: what is left when a wait times out."""
    counts = Counter(str(vm.state) for vm in vms)
    reasons = {str(vm.state): vm.reason for vm in vms if vm.reason}
    parts = []
    for state, count in sorted(counts.items()):
        reason = f" ({reasons[state]})" if state in reasons else ""
        parts.append(f"{state} {count}{reason}")
    return ", ".join(parts) or "no VMs"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in [0, 1]) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Recovery:
    """One VM of a failed host, running again elsewhere ``after_s`` after the failure."""

    name: str
    from_host: str
    to_host: str
    generation: int
    after_s: float


def recovery_report(recoveries: list[Recovery]) -> str:
    rows = [
        (r.name, r.from_host, r.to_host, str(r.generation), f"{r.after_s:.2f}s") for r in recoveries
    ]
    times = [r.after_s for r in recoveries]
    summary = (
        f"{len(recoveries)} VMs moved; recovery after the kill: "
        f"p50 {percentile(times, 0.5):.2f}s, max {max(times):.2f}s"
    )
    return table(("NAME", "FROM", "TO", "GEN", "RECOVERED"), rows) + "\n\n" + summary


def usage_report(report: UsageReport) -> str:
    """Billed hours and cost per VM and per size, then the total, for ``stratus usage``."""
    since, until = (time.isoformat(timespec="seconds") for time in (report.since, report.until))
    vm_rows = [
        (vm.name, vm.size, str(vm.hours), f"{vm.price_per_hour:g}", f"{vm.cost:.2f}")
        for vm in sorted(report.vms, key=lambda vm: vm.name)
    ]
    size_rows = [
        (size.size, str(size.vms), str(size.hours), f"{size.price_per_hour:g}", f"{size.cost:.2f}")
        for size in sorted(report.sizes, key=lambda size: size.size)
    ]
    return "\n\n".join(
        [
            f"usage {since} .. {until}",
            table(("NAME", "SIZE", "HOURS", "PRICE/H", "COST"), vm_rows),
            table(("SIZE", "VMS", "HOURS", "PRICE/H", "COST"), size_rows),
            f"total: {report.hours} hours, cost {report.cost:.2f}",
        ]
    )
