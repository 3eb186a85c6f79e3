"""Placement filters: small predicates that say why a host cannot take a VM. Pure.

A filter returns ``None`` when the host passes, or the ``Reason`` it rejects the host for.
The pipeline (``pipeline.place``) decides their order and counts the rejections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from scheduler.state.model import HostView, PlacementRequest


class Reason(StrEnum):
    """Why a host was rejected. The values appear in replies and logs."""

    HOST_DOWN = "host_down"
    HOST_CORDONED = "host_cordoned"
    WRONG_REGION = "wrong_region"
    AVOIDED = "avoided"
    """The host is in the request's ``avoid_hosts`` (e.g. the VM just failed to start there)."""
    DISKS_ELSEWHERE = "disks_elsewhere"
    """The VM's host-local disks live on another host (``pinned_host``)."""
    INSUFFICIENT_CPU = "insufficient_cpu"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    INSUFFICIENT_DISK = "insufficient_disk"
    """The host's disks have no room for the disks (or disk copies) the VM makes there."""
    AVAILABILITY_SET = "availability_set"
    """The host's fault domain holds more members of the set than another eligible one."""


Filter = Callable[[PlacementRequest, HostView], Reason | None]
"""``None`` means the host passes."""


def host_is_up(req: PlacementRequest, host: HostView) -> Reason | None:
    return None if host.up else Reason.HOST_DOWN


def host_not_cordoned(req: PlacementRequest, host: HostView) -> Reason | None:
    return None if not host.cordoned else Reason.HOST_CORDONED


def matches_region(req: PlacementRequest, host: HostView) -> Reason | None:
    """A request without a region may go to any region."""
    return None if req.region is None or req.region == host.region else Reason.WRONG_REGION


def not_avoided(req: PlacementRequest, host: HostView) -> Reason | None:
    return None if host.host_id not in req.avoid_hosts else Reason.AVOIDED


def holds_disks(req: PlacementRequest, host: HostView) -> Reason | None:
    """A VM whose disks live on one host can only run there."""
    ok = req.pinned_host is None or req.pinned_host == host.host_id
    return None if ok else Reason.DISKS_ELSEWHERE


def fits_cpu(req: PlacementRequest, host: HostView) -> Reason | None:
    return None if req.resources.cpu_milli <= host.free.cpu_milli else Reason.INSUFFICIENT_CPU


def fits_memory(req: PlacementRequest, host: HostView) -> Reason | None:
    return None if req.resources.mem_mib <= host.free.mem_mib else Reason.INSUFFICIENT_MEMORY


def fits_disk(req: PlacementRequest, host: HostView) -> Reason | None:
    return None if host.has_disk_room(req.disk_mib) else Reason.INSUFFICIENT_DISK


FILTERS: tuple[Filter, ...] = (
    # Cheap checks on the host's own state and identity first ...
    host_is_up,
    host_not_cordoned,
    matches_region,
    not_avoided,
    holds_disks,
    # ... then resource arithmetic.
    fits_cpu,
    fits_memory,
    fits_disk,
)
"""The filters every host must pass, in order: ``pipeline.place`` (the specification) and
``HostIndex`` (its fast path) both use this one list."""


@dataclass(frozen=True, slots=True)
class InFaultDomains:
    """Passes hosts in ``domains``; rejects the others for the availability set."""

    domains: frozenset[str]

    def __call__(self, req: PlacementRequest, host: HostView) -> Reason | None:
        return None if host.fault_domain in self.domains else Reason.AVAILABILITY_SET


def least_loaded_domains(hosts: Iterable[HostView], members: Mapping[str, int]) -> frozenset[str]:
    """The fault domains of ``hosts`` that hold the fewest members of a set.

    ``members`` counts the set's members per fault domain; a domain not in it holds none.
    Only domains that some host in ``hosts`` belongs to are compared, so a set spreads over
    the domains it can actually reach, and goes round again once each holds one.
    """
    counts = {host.fault_domain: members.get(host.fault_domain, 0) for host in hosts}
    if not counts:
        return frozenset()
    fewest = min(counts.values())
    return frozenset(domain for domain, count in counts.items() if count == fewest)
