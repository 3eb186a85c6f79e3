"""Properties of place_batch over random hosts and random request batches."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import event, given, settings, strategies as st

from common.ids import HostId, VmName
from common.resources import ZERO, Resources
from scheduler.placement.filters import least_loaded_domains
from scheduler.placement.index import place_batch
from scheduler.placement.pipeline import Placed, PlacementPolicy, Unplaceable
from scheduler.state.model import HostView, PlacementRequest

REGIONS = ("eu", "us")
DOMAINS = ("fd-a", "fd-b", "fd-c")
SETS = ("web", "db")
MAX_HOSTS = 8
HOST_IDS = [HostId(f"h{n}") for n in range(MAX_HOSTS)]


@st.composite
def hosts(draw: st.DrawFn) -> dict[HostId, HostView]:
    count = draw(st.integers(min_value=0, max_value=MAX_HOSTS))
    views: dict[HostId, HostView] = {}
    for n in range(count):
        capacity = Resources(
            draw(st.integers(0, 16).map(lambda c: c * 500)),
            draw(st.integers(0, 16).map(lambda m: m * 1024)),
        )
        overcommit = draw(st.sampled_from([1.0, 1.5, 2.0]))
        schedulable_cpu = int(capacity.cpu_milli * overcommit)
        allocated = Resources(
            draw(st.integers(0, schedulable_cpu + 1000)),  # may exceed: overcommit was lowered
            draw(st.integers(0, capacity.mem_mib)),
        )
        host_id = HOST_IDS[n]
        views[host_id] = HostView(
            host_id=host_id,
            region=draw(st.sampled_from(REGIONS)),
            fault_domain=draw(st.sampled_from(DOMAINS)),
            capacity=capacity,
            allocated=allocated,
            cpu_overcommit=overcommit,
            up=draw(st.sampled_from([True, True, True, False])),
            cordoned=draw(st.sampled_from([False, False, False, True])),
        )
    return views


requests = st.builds(
    PlacementRequest,
    name=st.just(VmName("vm")),
    resources=st.builds(
        Resources,
        st.integers(0, 8).map(lambda c: c * 500),
        st.integers(0, 8).map(lambda m: m * 1024),
    ),
    region=st.sampled_from([None, None, *REGIONS, "nowhere"]),
    availability_set=st.sampled_from([None, *SETS]),
    avoid_hosts=st.frozensets(st.sampled_from(HOST_IDS), max_size=2),
)

set_members = st.dictionaries(
    st.sampled_from(SETS),
    st.dictionaries(st.sampled_from(DOMAINS), st.integers(0, 3), max_size=3),
    max_size=2,
)


@dataclass(frozen=True)
class Case:
    hosts: dict[HostId, HostView]
    reqs: list[PlacementRequest]
    policy: PlacementPolicy
    members: dict[str, dict[str, int]]


cases = st.builds(
    Case,
    hosts=hosts(),
    reqs=st.lists(requests, max_size=10),
    policy=st.builds(PlacementPolicy, st.sampled_from(["binpack", "spread"])),
    members=set_members,
)


def _eligible(req: PlacementRequest, host: HostView) -> bool:
    """Whether ``host`` could take ``req``, written independently of the filters."""
    return (
        host.up
        and not host.cordoned
        and req.region in (None, host.region)
        and host.host_id not in req.avoid_hosts
        and req.resources.fits(host.free)
    )


@settings(max_examples=200, deadline=None)
@given(cases)
def test_place_batch_properties(case: Case) -> None:
    results = place_batch(case.reqs, case.hosts, case.policy, case.members)
    assert len(results) == len(case.reqs)
    assert place_batch(case.reqs, case.hosts, case.policy, case.members) == results

    # Replay the batch: every choice must have been a valid one at its point in the batch.
    current = dict(case.hosts)
    members = {name: dict(counts) for name, counts in case.members.items()}
    placed_on: dict[HostId, Resources] = {}
    for req, result in zip(case.reqs, results, strict=True):
        eligible = [host for host in current.values() if _eligible(req, host)]
        if isinstance(result, Unplaceable):
            event("unplaceable")
            assert eligible == []
            assert sum(result.rejections.values()) == len(case.hosts)
            assert result.summary().startswith("no host" if case.hosts else "no hosts")
            continue
        assert isinstance(result, Placed)
        event("placed in a set" if req.availability_set else "placed")
        assert 0.0 <= result.score <= 1.0
        host = current[result.host_id]
        assert host.up and not host.cordoned and req.region in (None, host.region)
        assert host in eligible  # and not avoided, and it fits
        if req.availability_set is not None:
            counts = members.setdefault(req.availability_set, {})
            assert host.fault_domain in least_loaded_domains(eligible, counts)
            counts[host.fault_domain] = counts.get(host.fault_domain, 0) + 1
        current[result.host_id] = host.with_reserved(req.resources)
        placed_on[host.host_id] = placed_on.get(host.host_id, ZERO) + req.resources

    for host_id, total in placed_on.items():
        assert total.fits(case.hosts[host_id].free), f"{host_id} overcommitted"


@settings(max_examples=100, deadline=None)
@given(cases, st.randoms(use_true_random=False))
def test_place_batch_ignores_host_order(case: Case, rnd: random.Random) -> None:
    shuffled = list(case.hosts.items())
    rnd.shuffle(shuffled)
    assert place_batch(case.reqs, dict(shuffled), case.policy, case.members) == place_batch(
        case.reqs, case.hosts, case.policy, case.members
    )
