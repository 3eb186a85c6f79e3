"""Builders for test data: short defaults, override only what a test is about."""

from __future__ import annotations

from collections.abc import Iterable

from common.ids import HostId, VmName
from common.resources import ZERO, Resources
from scheduler.state.model import HostView, PlacementRequest


def make_host(
    host_id: str = "h1",
    *,
    cpu_milli: int = 4000,
    mem_mib: int = 8192,
    region: str = "local",
    fault_domain: str = "fd-0",
    up: bool = True,
    cordoned: bool = False,
    allocated: Resources = ZERO,
    cpu_overcommit: float = 1.0,
) -> HostView:
    """A host with ``cpu_milli``/``mem_mib`` of capacity, ``allocated`` of it in use."""
    return HostView(
        host_id=HostId(host_id),
        region=region,
        fault_domain=fault_domain,
        capacity=Resources(cpu_milli, mem_mib),
        allocated=allocated,
        cpu_overcommit=cpu_overcommit,
        up=up,
        cordoned=cordoned,
    )


def make_request(
    name: str = "vm-1",
    *,
    cpu_milli: int = 1000,
    mem_mib: int = 1024,
    region: str | None = None,
    availability_set: str | None = None,
    avoid_hosts: Iterable[str] = (),
) -> PlacementRequest:
    return PlacementRequest(
        name=VmName(name),
        resources=Resources(cpu_milli, mem_mib),
        region=region,
        availability_set=availability_set,
        avoid_hosts=frozenset(HostId(h) for h in avoid_hosts),
    )
