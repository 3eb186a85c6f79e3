"""Where disk copies go: never two in one fault domain, never over a host's disk space, the
roomiest host of each domain first; ``CopyIndex`` answers what ``choose_copies`` does."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from common.ids import HostId
from scheduler.placement.copies import CopyIndex, CopyRequest, choose_copies
from scheduler.state.model import HostView
from tests.factories import make_host

HOST_IDS = [HostId(f"h{n:02}") for n in range(16)]
DOMAINS = ("fd-a", "fd-b", "fd-c", "fd-d")
REGIONS = ("eu", "us")


def disk_host(
    host_id: str, domain: str, *, capacity_mib: int = 0, used_mib: int = 0, **kw: object
) -> HostView:
    view = make_host(host_id, fault_domain=domain, **kw)  # type: ignore[arg-type]
    return HostView(
        host_id=view.host_id,
        region=view.region,
        fault_domain=domain,
        capacity=view.capacity,
        up=view.up,
        cordoned=view.cordoned,
        disk_capacity_mib=capacity_mib,
        disk_used_mib=used_mib,
        serves_replicas=True,
    )


@st.composite
def fleets(draw: st.DrawFn) -> list[HostView]:
    views = []
    for host_id in HOST_IDS[: draw(st.integers(0, len(HOST_IDS)))]:
        views.append(
            HostView(
                host_id=host_id,
                region=draw(st.sampled_from(REGIONS)),
                fault_domain=draw(st.sampled_from(DOMAINS)),
                capacity=make_host().capacity,
                up=draw(st.sampled_from([True, True, True, False])),
                cordoned=draw(st.sampled_from([False, False, False, True])),
                disk_capacity_mib=draw(st.sampled_from([0, 2048, 4096, 8192])),
                disk_used_mib=draw(st.sampled_from([0, 1024, 3072])),
                serves_replicas=draw(st.sampled_from([True, True, True, False])),
            )
        )
    return views


requests = st.builds(
    CopyRequest,
    count=st.integers(1, 3),
    disk_mib=st.sampled_from([0, 512, 1024, 2048]),
    region=st.sampled_from([None, *REGIONS]),
    taken_domains=st.frozensets(st.sampled_from(DOMAINS), max_size=2),
    avoid=st.frozensets(st.sampled_from(HOST_IDS), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(fleets(), st.lists(requests, max_size=20))
def test_the_index_answers_like_the_specification_and_keeps_the_rules(
    fleet: list[HostView], script: list[CopyRequest]
) -> None:
    index = CopyIndex(fleet)
    current = {view.host_id: view for view in fleet}
    for req in script:
        expected = choose_copies(req, current.values())
        assert index.choose(req) == expected
        if expected is None:
            continue
        domains = [current[h].fault_domain for h in expected]
        assert len(set(domains)) == len(domains) == req.count  # one copy per fault domain
        assert not set(domains) & req.taken_domains
        for host in expected:
            view = current[host]
            assert view.up and not view.cordoned and view.serves_replicas
            assert host not in req.avoid
            index.reserve(host, req.disk_mib)
            current[host] = view.with_reserved_disk(req.disk_mib)
            limit = current[host].disk_capacity_mib
            if limit and req.disk_mib:  # never taken over its capacity
                assert current[host].disk_used_mib <= limit
    assert index.same_as(CopyIndex(current.values()))


def test_the_roomiest_host_of_each_other_domain_gets_the_copies() -> None:
    fleet = [
        disk_host("a1", "fd-a", capacity_mib=10_000, used_mib=9_000),
        disk_host("a2", "fd-a", capacity_mib=10_000, used_mib=1_000),
        disk_host("b1", "fd-b", capacity_mib=10_000, used_mib=5_000),
        disk_host("c1", "fd-c", capacity_mib=10_000, used_mib=8_000),
    ]
    req = CopyRequest(count=2, disk_mib=1024, taken_domains=frozenset({"fd-b"}))
    assert choose_copies(req, fleet) == ["a2", "c1"]
    assert CopyIndex(fleet).choose(req) == ["a2", "c1"]


def test_too_few_fault_domains_with_room_is_no_answer() -> None:
    fleet = [
        disk_host("a1", "fd-a", capacity_mib=4096),
        disk_host("b1", "fd-b", capacity_mib=4096, used_mib=4000),
    ]
    req = CopyRequest(count=2, disk_mib=1024)
    assert choose_copies(req, fleet) is None
    assert CopyIndex(fleet).choose(req) is None
