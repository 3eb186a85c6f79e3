"""Read-side views: records to API structs. Pure."""

from __future__ import annotations

from common.messages import HostInfo, HostState, VmInfo
from common.resources import ZERO, Resources
from scheduler.core.disks import infos as disk_infos
from scheduler.state.model import HostRecord, HostRuntime, VmRecord


def vm_info(record: VmRecord) -> VmInfo:
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
        disks=disk_infos(record),
    )


def host_info(
    record: HostRecord,
    runtime: HostRuntime | None,
    allocated: Resources | None,
    vms: int,
    now_s: float,
    *,
    drain_remaining: int = 0,
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
    )
