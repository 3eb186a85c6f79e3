from __future__ import annotations

import pytest

from common.resources import Resources
from scheduler.placement.scorers import Scorer, score_binpack, score_spread
from scheduler.state.model import HostView
from tests.factories import make_host, make_request

SCORERS = pytest.mark.parametrize(
    "scorer", [score_binpack, score_spread], ids=["binpack", "spread"]
)

HOSTS = [
    make_host(cpu_milli=4000, mem_mib=8192),
    make_host(cpu_milli=4000, mem_mib=8192, allocated=Resources(4000, 8192)),
    make_host(cpu_milli=4000, mem_mib=8192, allocated=Resources(9000, 20000)),
    make_host(cpu_milli=0, mem_mib=0),
    make_host(cpu_milli=1000, mem_mib=1024, cpu_overcommit=3.0),
]
HOST_IDS = ["empty", "full", "over-allocated", "no-capacity", "overcommitted"]


@SCORERS
@pytest.mark.parametrize("host", HOSTS, ids=HOST_IDS)
@pytest.mark.parametrize(
    "resources",
    [Resources(0, 0), Resources(1000, 1024), Resources(50_000, 90_000)],
    ids=["zero", "small", "too-big"],
)
def test_score_in_unit_interval(scorer: Scorer, host: HostView, resources: Resources) -> None:
    req = make_request(cpu_milli=resources.cpu_milli, mem_mib=resources.mem_mib)
    assert 0.0 <= scorer(req, host) <= 1.0


@pytest.mark.parametrize(
    ("allocated", "expected_binpack"),
    [
        (Resources(0, 0), 0.25),  # 3/4 cpu and 3/4 mem left free
        (Resources(3000, 0), 0.625),  # all cpu used, 3/4 mem left
        (Resources(3000, 6144), 1.0),  # placing fills the host exactly
    ],
    ids=["empty", "cpu-full", "exact-fit"],
)
def test_binpack_and_spread_values(allocated: Resources, expected_binpack: float) -> None:
    host = make_host(cpu_milli=4000, mem_mib=8192, allocated=allocated)
    req = make_request(cpu_milli=1000, mem_mib=2048)
    assert score_binpack(req, host) == pytest.approx(expected_binpack)
    assert score_spread(req, host) == pytest.approx(1.0 - expected_binpack)


def test_binpack_prefers_the_tighter_fit() -> None:
    req = make_request(cpu_milli=1000, mem_mib=1024)
    roomy = make_host("roomy", cpu_milli=16000, mem_mib=65536)
    snug = make_host("snug", cpu_milli=2000, mem_mib=2048)
    assert score_binpack(req, snug) > score_binpack(req, roomy)
    assert score_spread(req, roomy) > score_spread(req, snug)


def test_scores_use_overcommitted_cpu() -> None:
    req = make_request(cpu_milli=2000, mem_mib=0)
    host = make_host(cpu_milli=2000, mem_mib=1024, cpu_overcommit=2.0)
    # half of the 4000 schedulable millicores stay free, and all memory
    assert score_spread(req, host) == pytest.approx(0.75)
