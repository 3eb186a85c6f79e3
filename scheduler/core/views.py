"""Read-side views: records to API structs, and error replies. Pure."""

from __future__ import annotations

import msgspec

from common.fields import ErrorBody, ErrorCode
from common.image_messages import ImageInfo, ImageReply
from common.messages import HostInfo, HostReply, HostState, VmInfo, VmReply
from common.migration_messages import MigrationInfo
from common.replica_messages import ReplicaInfo
from common.resources import ZERO, Resources
from scheduler.state.model import HostRecord, HostRuntime, MigrationRecord, VmRecord
from scheduler.state.storage import ImageRecord


def vm_error(code: ErrorCode, detail: str) -> VmReply:
    return VmReply(error=ErrorBody(code=code, detail=detail))


def image_error(code: ErrorCode, detail: str) -> ImageReply:
    return ImageReply(error=ErrorBody(code=code, detail=detail))


def host_error(code: ErrorCode, detail: str) -> HostReply:
    return HostReply(error=ErrorBody(code=code, detail=detail))


def vm_info(record: VmRecord) -> VmInfo:
    """The record as the API shows it (its disks as ``DiskInfo``, with their copies)."""
    info = msgspec.convert(record, VmInfo, from_attributes=True)
    for shown, disk in zip(info.disks, record.disks, strict=True):
        if disk.copies:
            shown.replicas = [
                ReplicaInfo(host=c.host, state=c.state.value, progress=c.progress)
                for c in disk.copies
            ]
    return info


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
