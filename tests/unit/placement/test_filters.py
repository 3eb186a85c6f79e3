from __future__ import annotations

import pytest

from common.resources import Resources
from scheduler.placement.filters import (
    Filter,
    InFaultDomains,
    Reason,
    fits_cpu,
    fits_memory,
    host_is_up,
    host_not_cordoned,
    least_loaded_domains,
    matches_region,
    not_avoided,
)
from scheduler.state.model import HostView, PlacementRequest
from tests.factories import make_host, make_request

CASES: list[tuple[str, Filter, PlacementRequest, HostView, Reason | None]] = [
    ("up", host_is_up, make_request(), make_host(up=True), None),
    ("down", host_is_up, make_request(), make_host(up=False), Reason.HOST_DOWN),
    ("not-cordoned", host_not_cordoned, make_request(), make_host(), None),
    (
        "cordoned",
        host_not_cordoned,
        make_request(),
        make_host(cordoned=True),
        Reason.HOST_CORDONED,
    ),
    ("region-any", matches_region, make_request(region=None), make_host(region="eu"), None),
    ("region-same", matches_region, make_request(region="eu"), make_host(region="eu"), None),
    (
        "region-other",
        matches_region,
        make_request(region="us"),
        make_host(region="eu"),
        Reason.WRONG_REGION,
    ),
    ("not-avoided", not_avoided, make_request(avoid_hosts=["h2"]), make_host("h1"), None),
    (
        "avoided",
        not_avoided,
        make_request(avoid_hosts=["h1", "h2"]),
        make_host("h1"),
        Reason.AVOIDED,
    ),
    ("cpu-fits", fits_cpu, make_request(cpu_milli=1000), make_host(cpu_milli=4000), None),
    ("cpu-exact", fits_cpu, make_request(cpu_milli=4000), make_host(cpu_milli=4000), None),
    (
        "cpu-short",
        fits_cpu,
        make_request(cpu_milli=3001),
        make_host(cpu_milli=4000, allocated=Resources(1000, 0)),
        Reason.INSUFFICIENT_CPU,
    ),
    (
        "cpu-overcommit",
        fits_cpu,
        make_request(cpu_milli=6000),
        make_host(cpu_milli=4000, cpu_overcommit=2.0, allocated=Resources(2000, 0)),
        None,
    ),
    (
        "cpu-ignores-memory",
        fits_cpu,
        make_request(cpu_milli=1000, mem_mib=99_999),
        make_host(),
        None,
    ),
    ("mem-fits", fits_memory, make_request(mem_mib=1024), make_host(mem_mib=8192), None),
    ("mem-exact", fits_memory, make_request(mem_mib=8192), make_host(mem_mib=8192), None),
    (
        "mem-short",
        fits_memory,
        make_request(mem_mib=4097),
        make_host(mem_mib=8192, allocated=Resources(0, 4096)),
        Reason.INSUFFICIENT_MEMORY,
    ),
    (
        "mem-never-overcommitted",
        fits_memory,
        make_request(mem_mib=8193),
        make_host(mem_mib=8192, cpu_overcommit=4.0),
        Reason.INSUFFICIENT_MEMORY,
    ),
    (
        "fault-domain-in",
        InFaultDomains(frozenset({"fd-a", "fd-b"})),
        make_request(),
        make_host(fault_domain="fd-b"),
        None,
    ),
    (
        "fault-domain-out",
        InFaultDomains(frozenset({"fd-a"})),
        make_request(),
        make_host(fault_domain="fd-b"),
        Reason.AVAILABILITY_SET,
    ),
]


@pytest.mark.parametrize(
    ("check", "req", "host", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_filter(
    check: Filter, req: PlacementRequest, host: HostView, expected: Reason | None
) -> None:
    assert check(req, host) == expected


@pytest.mark.parametrize(
    ("domains", "members", "expected"),
    [
        ([], {}, set()),
        (["a", "b", "c"], {}, {"a", "b", "c"}),
        (["a", "b", "c"], {"a": 1}, {"b", "c"}),
        (["a", "b", "c"], {"a": 1, "b": 1, "c": 1}, {"a", "b", "c"}),
        (["a", "b"], {"a": 2, "b": 1, "c": 0}, {"b"}),
        (["a", "a", "b"], {"a": 1, "b": 3}, {"a"}),
    ],
    ids=["no-hosts", "empty-set", "one-taken", "round-again", "unreachable-domain", "dup-hosts"],
)
def test_least_loaded_domains(
    domains: list[str], members: dict[str, int], expected: set[str]
) -> None:
    hosts = [make_host(f"h{i}", fault_domain=d) for i, d in enumerate(domains)]
    assert least_loaded_domains(hosts, members) == expected
