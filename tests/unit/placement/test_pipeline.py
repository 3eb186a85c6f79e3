from __future__ import annotations

import copy
from dataclasses import replace

import msgspec
import pytest

from common.ids import HostId
from common.resources import Resources
from scheduler.placement.filters import Reason
from scheduler.placement.index import place_batch
from scheduler.placement.pipeline import Placed, PlacementPolicy, Unplaceable, could_ever_fit, place
from scheduler.state.model import HostView, PlacementRequest
from tests.factories import make_host, make_request

BINPACK = PlacementPolicy(scorer="binpack")
SPREAD = PlacementPolicy(scorer="spread")


def _placed_on(result: Placed | Unplaceable) -> str:
    assert isinstance(result, Placed), result
    return result.host_id


def _by_id(*hosts: HostView) -> dict[HostId, HostView]:
    return {host.host_id: host for host in hosts}


# -- choosing a host ---------------------------------------------------------------------------

# Fractions of capacity left free after placing 1c/1g: big ~0.95, half-full ~0.41, snug 0.33.
MIXED = [
    make_host("big", cpu_milli=16000, mem_mib=65536),
    make_host("half-full", cpu_milli=8000, mem_mib=16384, allocated=Resources(4000, 8192)),
    make_host("snug", cpu_milli=1500, mem_mib=1536),
    make_host("too-small", cpu_milli=500, mem_mib=512),
]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(BINPACK, "snug"), (SPREAD, "big")],
    ids=["binpack-best-fit", "spread-emptiest"],
)
def test_policy_picks_host(policy: PlacementPolicy, expected: str) -> None:
    result = place(make_request(cpu_milli=1000, mem_mib=1024), MIXED, policy)
    assert _placed_on(result) == expected
    assert isinstance(result, Placed)
    assert 0.0 <= result.score <= 1.0


@pytest.mark.parametrize("policy", [BINPACK, SPREAD], ids=["binpack", "spread"])
@pytest.mark.parametrize(
    "order", [["h2", "h1", "h3"], ["h3", "h2", "h1"], ["h1", "h2", "h3"]], ids=["a", "b", "c"]
)
def test_ties_break_by_smallest_host_id(policy: PlacementPolicy, order: list[str]) -> None:
    hosts = [make_host(host_id) for host_id in order]
    assert _placed_on(place(make_request(), hosts, policy)) == "h1"


@pytest.mark.parametrize("policy", [BINPACK, SPREAD], ids=["binpack", "spread"])
def test_down_and_cordoned_hosts_are_never_chosen(policy: PlacementPolicy) -> None:
    # The down and cordoned hosts would win on score under either policy.
    hosts = [
        make_host("a-down-snug", cpu_milli=1000, mem_mib=1024, up=False),
        make_host("a-cordoned-big", cpu_milli=64000, mem_mib=262144, cordoned=True),
        make_host("a-down-big", cpu_milli=64000, mem_mib=262144, up=False),
        make_host("z-ok", cpu_milli=4000, mem_mib=8192),
    ]
    assert _placed_on(place(make_request(), hosts, policy)) == "z-ok"


@pytest.mark.parametrize(
    ("region", "allowed"),
    [(None, {"eu-1", "us-1"}), ("us", {"us-1"}), ("eu", {"eu-1"})],
    ids=["any-region", "us", "eu"],
)
def test_region(region: str | None, allowed: set[str]) -> None:
    hosts = [make_host("eu-1", region="eu"), make_host("us-1", region="us")]
    for policy in (BINPACK, SPREAD):
        assert _placed_on(place(make_request(region=region), hosts, policy)) in allowed


def test_avoided_host_is_skipped() -> None:
    hosts = [make_host("h1"), make_host("h2")]
    assert _placed_on(place(make_request(avoid_hosts=["h1"]), hosts, BINPACK)) == "h2"


# -- saying why nothing fits -------------------------------------------------------------------


def test_unplaceable_counts_each_host_once_by_first_reason() -> None:
    hosts = [
        make_host("down", up=False, region="other", mem_mib=1),  # down wins over the rest
        make_host("cordoned", cordoned=True),
        make_host("wrong-region-1", region="other"),
        make_host("wrong-region-2", region="other", mem_mib=1),
        make_host("avoided"),
        make_host("no-cpu", cpu_milli=500, mem_mib=1),  # cpu is checked before memory
        make_host("no-mem-1", mem_mib=512),
        make_host("no-mem-2", mem_mib=512),
        make_host("no-mem-3", allocated=Resources(0, 8000)),
    ]
    result = place(make_request(region="local", avoid_hosts=["avoided"]), hosts, BINPACK)
    assert result == Unplaceable(
        rejections={
            Reason.HOST_DOWN: 1,
            Reason.HOST_CORDONED: 1,
            Reason.WRONG_REGION: 2,
            Reason.AVOIDED: 1,
            Reason.INSUFFICIENT_CPU: 1,
            Reason.INSUFFICIENT_MEMORY: 3,
        }
    )
    assert sum(result.rejections.values()) == len(hosts)
    assert result.summary() == (
        "no host fits: insufficient_memory: 3 hosts, wrong_region: 2 hosts, avoided: 1 host, "
        "host_cordoned: 1 host, host_down: 1 host, insufficient_cpu: 1 host"
    )


@pytest.mark.parametrize(
    ("rejections", "expected"),
    [
        ({}, "no hosts"),
        ({Reason.HOST_DOWN: 1}, "no host fits: host_down: 1 host"),
        (
            {Reason.WRONG_REGION: 2, Reason.INSUFFICIENT_MEMORY: 3},
            "no host fits: insufficient_memory: 3 hosts, wrong_region: 2 hosts",
        ),
        (
            {Reason.WRONG_REGION: 2, Reason.AVOIDED: 2},
            "no host fits: avoided: 2 hosts, wrong_region: 2 hosts",
        ),
    ],
    ids=["no-hosts", "singular", "by-count", "ties-by-reason"],
)
def test_summary(rejections: dict[Reason, int], expected: str) -> None:
    assert Unplaceable(rejections=rejections).summary() == expected


def test_no_hosts_is_unplaceable() -> None:
    result = place(make_request(), [], BINPACK)
    assert result == Unplaceable(rejections={})
    assert result.summary() == "no hosts"


# -- availability sets -------------------------------------------------------------------------

THREE_DOMAINS = _by_id(
    *(
        make_host(f"{fd}-{n}", fault_domain=fd, cpu_milli=8000, mem_mib=16384)
        for fd in ("fd-a", "fd-b", "fd-c")
        for n in (1, 2)
    )
)


def _set_member(n: int) -> PlacementRequest:
    return make_request(f"web-{n}", availability_set="web")


@pytest.mark.parametrize("policy", [BINPACK, SPREAD], ids=["binpack", "spread"])
def test_set_spreads_over_fault_domains_then_goes_round(policy: PlacementPolicy) -> None:
    results = place_batch([_set_member(n) for n in range(4)], THREE_DOMAINS, policy)
    domains = [THREE_DOMAINS[HostId(_placed_on(r))].fault_domain for r in results]
    assert sorted(domains[:3]) == ["fd-a", "fd-b", "fd-c"]
    assert domains[3] in {"fd-a", "fd-b", "fd-c"}


def test_fourth_member_goes_to_least_loaded_domain() -> None:
    existing = {"web": {"fd-a": 2, "fd-b": 2, "fd-c": 1}, "db": {"fd-c": 5}}
    result = place_batch([_set_member(4)], THREE_DOMAINS, BINPACK, existing)
    assert THREE_DOMAINS[HostId(_placed_on(result[0]))].fault_domain == "fd-c"


def test_set_member_without_counts_may_go_anywhere() -> None:
    hosts = list(THREE_DOMAINS.values())
    assert _placed_on(place(_set_member(0), hosts, BINPACK)) == "fd-a-1"


def test_set_uses_a_full_domain_only_when_no_emptier_one_fits() -> None:
    hosts = [
        make_host("a", fault_domain="fd-a"),
        make_host("b-full", fault_domain="fd-b", allocated=Resources(4000, 8192)),
    ]
    counts = {"fd-a": 3, "fd-b": 0}
    assert _placed_on(place(_set_member(0), hosts, BINPACK, counts)) == "a"


def test_sets_are_counted_separately() -> None:
    reqs = [
        make_request("web-0", availability_set="web"),
        make_request("db-0", availability_set="db"),
        make_request("web-1", availability_set="web"),
        make_request("db-1", availability_set="db"),
    ]
    results = place_batch(reqs, THREE_DOMAINS, BINPACK)
    domains = [THREE_DOMAINS[HostId(_placed_on(r))].fault_domain for r in results]
    assert domains[0] != domains[2]
    assert domains[1] != domains[3]


# -- batches -----------------------------------------------------------------------------------


def test_batch_sees_earlier_reservations() -> None:
    hosts = _by_id(make_host("h1", cpu_milli=2000, mem_mib=2048), make_host("h2"))
    reqs = [make_request(f"vm-{n}", cpu_milli=1000, mem_mib=1024) for n in range(3)]
    results = place_batch(reqs, hosts, BINPACK)
    assert [_placed_on(r) for r in results] == ["h1", "h1", "h2"]


def test_batch_reports_unplaceable_in_order() -> None:
    hosts = _by_id(make_host("h1", cpu_milli=1000, mem_mib=1024))
    reqs = [
        make_request("vm-0"),
        make_request("vm-1"),
        make_request("vm-2", cpu_milli=0, mem_mib=0),
    ]
    results = place_batch(reqs, hosts, SPREAD)
    assert _placed_on(results[0]) == "h1"
    assert results[1] == Unplaceable(rejections={Reason.INSUFFICIENT_CPU: 1})
    assert _placed_on(results[2]) == "h1"


def test_batch_does_not_mutate_inputs() -> None:
    hosts = dict(THREE_DOMAINS)
    members = {"web": {"fd-a": 1}}
    reqs = [_set_member(n) for n in range(5)]
    hosts_before, members_before = copy.deepcopy(hosts), copy.deepcopy(members)
    place_batch(reqs, hosts, BINPACK, members)
    assert hosts == hosts_before
    assert members == members_before


def test_empty_batch() -> None:
    assert place_batch([], THREE_DOMAINS, BINPACK) == []


# -- could a request ever fit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "region", "expected"),
    [
        ([], None, True),
        ([make_host(region="eu")], "us", True),
        ([make_host(cpu_milli=500), make_host("h2", mem_mib=512)], None, False),
        ([make_host(cpu_milli=500, region="eu"), make_host("h2", region="us")], "eu", False),
        ([make_host(cpu_milli=500, region="eu"), make_host("h2", region="us")], None, True),
        ([make_host(up=False, cordoned=True, allocated=Resources(4000, 8192))], None, True),
        ([make_host(cpu_milli=1000, cpu_overcommit=2.0)], None, True),
    ],
    ids=[
        "no-hosts",
        "no-hosts-in-region",
        "hosts-too-small",
        "region-hosts-too-small",
        "any-region-one-big-enough",
        "full-down-cordoned-host-counts",
        "fits-with-overcommit",
    ],
)
def test_could_ever_fit(hosts: list[HostView], region: str | None, expected: bool) -> None:
    req = make_request(cpu_milli=2000, mem_mib=2048, region=region)
    assert could_ever_fit(req, hosts) is expected


def test_a_host_holding_a_current_copy_is_preferred_when_it_can_take_the_vm() -> None:
    hosts = [make_host("h1"), make_host("h2"), make_host("h3", allocated=Resources(2000, 2048))]
    binpack = PlacementPolicy("binpack")
    req = replace(make_request(), preferred_hosts=(HostId("h2"),))
    result = place(req, hosts, binpack)
    assert isinstance(result, Placed) and result.host_id == "h2"  # h3 would bin-pack better
    full = replace(make_request(cpu_milli=4000), preferred_hosts=(HostId("h3"),))
    result = place(full, hosts, binpack)
    assert isinstance(result, Placed) and result.host_id != "h3"  # it cannot: anywhere else


def test_a_host_without_disk_room_is_rejected_for_that() -> None:
    host = msgspec.structs.replace(make_host("h1"), disk_capacity_mib=1000, disk_used_mib=500)
    result = place(replace(make_request(), disk_mib=600), [host], PlacementPolicy())
    assert isinstance(result, Unplaceable)
    assert result.rejections == {Reason.INSUFFICIENT_DISK: 1}
    assert isinstance(
        place(replace(make_request(), disk_mib=500), [host], PlacementPolicy()), Placed
    )
