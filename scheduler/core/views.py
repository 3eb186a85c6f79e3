"""Read-side views: records to API structs, and error replies. Pure."""

from __future__ import annotations

import msgspec

from common.fields import ErrorBody, ErrorCode
from common.image_messages import ImageInfo, ImageReply
from common.messages import DiskInfo, HostInfo, HostReply, HostState, VmInfo, VmReply
from common.migration_messages import MigrationInfo
from common.network_messages import EndpointInfo, NicInfo
from common.replica_messages import ReplicaInfo
from common.resources import ZERO, Resources
from scheduler.state.model import HostRecord, HostRuntime, MigrationRecord, VmRecord
from scheduler.state.storage import DiskRecord, EndpointRecord, ImageRecord, NicRecord


def vm_error(code: ErrorCode, detail: str) -> VmReply:
    return VmReply(error=ErrorBody(code=code, detail=detail))


def image_error(code: ErrorCode, detail: str) -> ImageReply:
    return ImageReply(error=ErrorBody(code=code, detail=detail))


def host_error(code: ErrorCode, detail: str) -> HostReply:
    return HostReply(error=ErrorBody(code=code, detail=detail))


def vm_info(record: VmRecord) -> VmInfo:
    """The record as the API shows it (its disks as ``DiskInfo``, with their copies).

    Built field by field: every create is answered with one, and ``msgspec.convert(...,
    from_attributes=True)`` took four times as long (tests/unit/scheduler/test_views.py checks
    that both give the same)."""
    migration = record.migration
    return VmInfo(
        name=record.name,
        size=record.size,
        cpu_milli=record.cpu_milli,
        mem_mib=record.mem_mib,
        image=record.image,
        region=record.region,
        availability_set=record.availability_set,
        state=record.state,
        host=record.host,
        generation=record.generation,
        reason=record.reason,
        created_at=record.created_at,
        updated_at=record.updated_at,
        disks=[_disk_info(disk) for disk in record.disks],
        nics=nic_infos(record.nics) if record.nics else [],
        endpoints=endpoint_infos(record.endpoints) if record.endpoints else [],
        migration=migration_info(migration) if migration is not None else None,
    )


def _disk_info(disk: DiskRecord) -> DiskInfo:
    return DiskInfo(
        disk_id=disk.disk_id,
        kind=disk.kind,
        size_mib=disk.size_mib,
        image=disk.image,
        storage=disk.storage,
        host=disk.host,
        replicas=[
            ReplicaInfo(host=c.host, state=c.state.value, progress=c.progress) for c in disk.copies
        ],
    )


def nic_infos(nics: list[NicRecord]) -> list[NicInfo]:
    """Built field by field: an event per VM change made ``msgspec.convert`` a hot spot."""
    return [
        NicInfo(vnet=n.vnet, ip=n.ip, mac=n.mac, prefix_len=n.prefix_len, gateway=n.gateway)
        for n in nics
    ]


def endpoint_infos(endpoints: list[EndpointRecord]) -> list[EndpointInfo]:
    return [
        EndpointInfo(
            vm_port=e.vm_port,
            protocol=e.protocol,
            public_port=e.public_port,
            address=e.address,
            allow=list(e.allow),
        )
        for e in endpoints
    ]


def migration_info(record: MigrationRecord) -> MigrationInfo:
    return MigrationInfo(
        source=record.source,
        target=record.target,
        attempt=record.attempt,
        cause=record.cause,
        phase=record.phase,
        started_at=record.started_at,
        transferred_mib=record.transferred_mib,
        total_mib=record.total_mib,
    )


def image_info(image: ImageRecord) -> ImageInfo:
    return msgspec.convert(image, ImageInfo, from_attributes=True)


def host_info(
    record: HostRecord,
    runtime: HostRuntime | None,
    allocated: Resources | None,
    vms: int,
    now_s: float,
    *,
    drain_remaining: int = 0,
    migrations: int = 0,
    disk_used_mib: int = 0,
    replicas: int = 0,
) -> HostInfo:
    return HostInfo(
        host_id=record.host_id,
        state=HostState.UP if record.up else HostState.DOWN,
        cordoned=record.cordoned,
        region=record.region,
        fault_domain=record.fault_domain,
        labels=dict(record.labels),
        capacity=record.capacity,
        allocated=allocated or ZERO,
        vms=vms,
        fenced=runtime.fenced if runtime else False,
        driver=record.driver,
        last_heartbeat_age_s=round(now_s - runtime.last_seen_s, 3) if runtime else None,
        draining=record.draining,
        drain_remaining=drain_remaining,
        underlay_ip=record.underlay_ip or None,
        migrations=migrations,
        disk_capacity_mib=record.disk_capacity_mib,
        disk_used_mib=disk_used_mib,
        replicas=replicas,
    )
