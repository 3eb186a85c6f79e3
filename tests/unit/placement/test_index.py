"""HostIndex answers exactly what the readable ``place`` answers, request after request."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from hypothesis import event, given, settings, strategies as st

from common.ids import HostId, VmName
from common.resources import Resources
from scheduler.placement.index import HostIndex, place_batch
from scheduler.placement.pipeline import Placed, PlacementPolicy, Unplaceable, place
from scheduler.state.model import HostView, PlacementRequest
from tests.factories import make_host

HOST_IDS = [HostId(f"h{n:02}") for n in range(24)]
REGIONS = ("eu", "us")
DOMAINS = ("fd-a", "fd-b")


@st.composite
def fleets(draw: st.DrawFn) -> list[HostView]:
    """Hosts of a few shared shapes, allocated in coarse steps so that scores often tie."""
    shapes = draw(
        st.lists(
            st.tuples(st.sampled_from([0, 2000, 4000, 6000]), st.sampled_from([0, 4096, 6144])),
            min_size=1,
            max_size=3,
        )
    )
    count = draw(st.integers(0, len(HOST_IDS)))
    views = []
    for host_id in HOST_IDS[:count]:
        cpu, mem = draw(st.sampled_from(shapes))
        overcommit = draw(st.sampled_from([1.0, 1.0, 1.5]))
        views.append(
            HostView(
                host_id=host_id,
                region=draw(st.sampled_from(REGIONS)),
                fault_domain=draw(st.sampled_from(DOMAINS)),
                capacity=Resources(cpu, mem),
                allocated=Resources(
                    draw(st.integers(-1, 4).map(lambda n: n * 1000)),  # -1000: a drifted host
                    draw(st.integers(0, 3).map(lambda n: n * 2048)),
                ),
                cpu_overcommit=overcommit,
                up=draw(st.sampled_from([True, True, True, False])),
                cordoned=draw(st.sampled_from([False, False, False, True])),
                disk_capacity_mib=draw(st.sampled_from([0, 0, 4096, 8192])),
                disk_used_mib=draw(st.sampled_from([0, 1024, 4096])),
            )
        )
    return views


requests = st.builds(
    PlacementRequest,
    name=st.just(VmName("vm")),
    resources=st.builds(
        Resources,
        st.integers(0, 6).map(lambda n: n * 500),
        st.integers(0, 4).map(lambda n: n * 1024),
    ),
    region=st.sampled_from([None, None, *REGIONS, "nowhere"]),
    availability_set=st.sampled_from([None, None, "web"]),
    avoid_hosts=st.frozensets(st.sampled_from(HOST_IDS[:12]), max_size=4),
    pinned_host=st.sampled_from([None, None, None, None, HOST_IDS[0], HOST_IDS[3]]),
    disk_mib=st.sampled_from([0, 0, 1024, 4096]),
    preferred_hosts=st.lists(st.sampled_from(HOST_IDS), max_size=3).map(tuple),
)


@dataclass(frozen=True)
class Step:
    req: PlacementRequest
    release: int | None
    """Index of an earlier placement whose VM departs before this request, if any."""


steps = st.builds(Step, req=requests, release=st.none() | st.integers(0, 30))


@settings(max_examples=400, deadline=None)
@given(
    fleets(),
    st.lists(steps, max_size=30),
    st.sampled_from([PlacementPolicy("binpack"), PlacementPolicy("spread")]),
    st.dictionaries(st.sampled_from(DOMAINS), st.integers(0, 2)),
)
def test_index_answers_like_place(
    fleet: list[HostView], script: list[Step], policy: PlacementPolicy, members: dict[str, int]
) -> None:
    index = HostIndex(fleet)
    current = {view.host_id: view for view in fleet}
    placed: list[tuple[HostId, Resources]] = []
    counts = dict(members)
    for step in script:
        if step.release is not None and step.release < len(placed):
            host_id, resources = placed.pop(step.release)
            index.release(host_id, resources)
            view = current[host_id]
            current[host_id] = msgspec.structs.replace(view, allocated=view.allocated - resources)
        req = step.req
        expected = place(req, list(current.values()), policy, counts)
        assert index.place(req, policy, counts) == expected
        if isinstance(expected, Unplaceable):
            event("unplaceable")
            continue
        event("placed")
        if req.availability_set is not None:
            domain = current[expected.host_id].fault_domain
            counts[domain] = counts.get(domain, 0) + 1
        index.reserve(expected.host_id, req.resources, req.disk_mib)
        current[expected.host_id] = current[expected.host_id].with_reserved(
            req.resources, req.disk_mib
        )
        placed.append((expected.host_id, req.resources))
    assert index.views == sorted(current.values(), key=lambda view: view.host_id)


def test_equal_free_vectors_go_to_the_smallest_host_id() -> None:
    fleet = [make_host(f"h{n}", cpu_milli=8000, mem_mib=16384) for n in (3, 1, 2)]
    for policy in (PlacementPolicy("binpack"), PlacementPolicy("spread")):
        results = place_batch(
            [PlacementRequest(VmName("a"), Resources(1000, 1024))],
            {view.host_id: view for view in fleet},
            policy,
        )
        assert results == [Placed(HostId("h1"), results[0].score)]  # type: ignore[union-attr]


def test_binpack_fills_the_fullest_host_that_fits() -> None:
    fleet = [
        make_host("roomy", cpu_milli=8000, mem_mib=16384),
        make_host("full", cpu_milli=8000, mem_mib=16384, allocated=Resources(8000, 16384)),
        make_host("snug", cpu_milli=8000, mem_mib=16384, allocated=Resources(6000, 12288)),
    ]
    index = HostIndex(fleet)
    binpack = PlacementPolicy("binpack")
    first = index.place(PlacementRequest(VmName("a"), Resources(2000, 4096)), binpack)
    assert isinstance(first, Placed) and first.host_id == "snug"
    index.reserve(first.host_id, Resources(2000, 4096))
    second = index.place(PlacementRequest(VmName("b"), Resources(2000, 4096)), binpack)
    assert isinstance(second, Placed) and second.host_id == "roomy"
    index.release(HostId("full"), Resources(8000, 16384))
    third = index.place(PlacementRequest(VmName("c"), Resources(8000, 16384)), binpack)
    assert third == Placed(HostId("full"), 1.0)
