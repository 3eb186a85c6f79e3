"""The rebalancer's rounds on small clusters: what it moves, where, and when it holds back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import pytest

from common.config import RebalanceConfig, SchedulerConfig, load_config
from common.errors import ConfigError
from common.ids import HostId, VmName
from common.resources import ZERO, Resources
from scheduler.placement.pipeline import PlacementPolicy
from scheduler.placement.rebalance import (
    Cluster,
    Idle,
    MigrationBudget,
    Move,
    Plan,
    RebalanceVm,
    plan_moves,
)
from scheduler.state.model import HostView

HOST = Resources(8000, 16384)
NOW_S = 50_000.0
BINPACK, SPREAD = PlacementPolicy("binpack"), PlacementPolicy("spread")


def _vm(
    name: str, cpu: int, *, last_migrated_s: float | None = None, aset: str | None = None
) -> RebalanceVm:
    return RebalanceVm(
        VmName(name),
        Resources(cpu, cpu * 2),
        availability_set=aset,
        last_migrated_s=last_migrated_s,
    )


def _cluster(
    layout: Mapping[str, Sequence[RebalanceVm]],
    *,
    down: str | None = None,
    cordoned: str | None = None,
    draining: frozenset[HostId] = frozenset(),
    domains: dict[str, str] | None = None,
) -> Cluster:
    views = []
    for host, vms in layout.items():
        used = sum((vm.resources for vm in vms), ZERO)
        views.append(
            HostView(
                host_id=HostId(host),
                region="eu",
                fault_domain=(domains or {}).get(host, "fd-0"),
                capacity=HOST,
                allocated=used,
                up=host != down,
                cordoned=host == cordoned,
            )
        )
    members: dict[str, dict[str, int]] = {}
    for host, vms in layout.items():
        for vm in vms:
            if vm.availability_set is not None:
                domain = (domains or {}).get(host, "fd-0")
                counts = members.setdefault(vm.availability_set, {})
                counts[domain] = counts.get(domain, 0) + 1
    vms_by_host = {HostId(host): list(vms) for host, vms in layout.items()}
    return Cluster(views, vms_by_host, draining=draining, set_members=members)


def _plan(
    cluster: Cluster,
    policy: PlacementPolicy = BINPACK,
    budget: MigrationBudget | None = None,
    **knobs: float | str,
) -> Plan:
    knobs.setdefault("room_hosts", 0)  # the emptying alone; making room is tested on its own
    config = msgspec.structs.replace(RebalanceConfig(), **knobs)
    return plan_moves(cluster, policy, config, budget or MigrationBudget(), NOW_S)


# h0 is 75% full; h1 holds one small VM (12.5%) that fits on h0; h2 is empty.
LIGHT = {"h0": [_vm("big", 6000)], "h1": [_vm("small", 1000)], "h2": []}


def test_binpack_frees_the_lightly_used_host_onto_a_host_in_use() -> None:
    plan = _plan(_cluster(LIGHT))
    assert plan.moves == (Move(VmName("small"), HostId("h1"), HostId("h0")),)
    assert plan.idle is None
    assert plan.budget == MigrationBudget((NOW_S,), NOW_S)


def test_binpack_moves_nothing_when_a_host_cannot_be_emptied_whole() -> None:
    # h1's two VMs: 1 + 2.5 cores; h0 has 2 cores free, so one would fit but not both.
    layout = {"h0": [_vm("big", 6000)], "h1": [_vm("s1", 1000), _vm("s2", 2500)], "h2": []}
    assert _plan(_cluster(layout)).moves == ()


@pytest.mark.parametrize(
    ("down", "config", "expected"),
    [
        ("h2", RebalanceConfig(), Idle.HOST_DOWN),
        (None, RebalanceConfig(enabled=False), Idle.DISABLED),
        (None, RebalanceConfig(max_migrations_per_hour=0), Idle.BUDGET_SPENT),
    ],
    ids=["a host is down", "switched off", "no hourly budget"],
)
def test_nothing_moves_while_paused(
    down: str | None, config: RebalanceConfig, expected: Idle
) -> None:
    plan = plan_moves(_cluster(LIGHT, down=down), BINPACK, config, MigrationBudget(), NOW_S)
    assert (plan.moves, plan.idle) == ((), expected)


def test_a_round_at_most_every_interval_and_at_most_the_hourly_budget() -> None:
    cluster = _cluster(LIGHT)
    first = _plan(cluster)
    assert len(first.moves) == 1
    again = plan_moves(cluster, BINPACK, RebalanceConfig(), first.budget, NOW_S + 1)
    assert (again.moves, again.idle) == ((), Idle.NOT_DUE)
    bound = RebalanceConfig().max_migrations_per_hour
    spent = MigrationBudget(tuple(NOW_S - 60 for _ in range(bound)), NOW_S - 3600)
    assert _plan(cluster, budget=spent).idle == Idle.BUDGET_SPENT
    an_hour_later = MigrationBudget(tuple(NOW_S - 3600 for _ in range(bound)), NOW_S - 3600)
    assert len(_plan(cluster, budget=an_hour_later).moves) == 1


def test_a_vm_in_its_cool_down_keeps_its_host_in_use() -> None:
    layout = {**LIGHT, "h1": [_vm("small", 1000, last_migrated_s=NOW_S - 60)]}
    assert _plan(_cluster(layout)).moves == ()
    layout = {**LIGHT, "h1": [_vm("small", 1000, last_migrated_s=NOW_S - 3600)]}
    assert len(_plan(_cluster(layout)).moves) == 1


def test_never_onto_a_cordoned_or_draining_host_nor_an_empty_one() -> None:
    # h0 is the only host in use that h1's VM fits on; h2 is empty.
    assert _plan(_cluster(LIGHT, cordoned="h0")).moves == ()
    assert _plan(_cluster(LIGHT, draining=frozenset({HostId("h0")}))).moves == ()


def test_binpack_leaves_a_host_with_more_vms_than_may_migrate_at_once() -> None:
    layout = {"h0": [_vm("big", 4000)], "h1": [_vm(f"s{n}", 250) for n in range(3)]}
    assert _plan(_cluster(layout), max_migrations_per_host=2).moves == ()
    assert len(_plan(_cluster(layout), max_migrations_per_host=3).moves) == 3


def test_an_availability_set_member_never_leaves_for_a_domain_holding_more_of_the_set() -> None:
    domains = {"h0": "fd-a", "h1": "fd-b", "h2": "fd-b"}
    layout = {
        "h0": [_vm("big", 6000), _vm("web-1", 500, aset="web")],
        "h1": [_vm("web-2", 500, aset="web")],
        "h2": [_vm("other", 1000)],
    }
    moves = _plan(_cluster(layout, domains=domains)).moves
    # web-2 may not join web-1 in fd-a; it may go to h2, in its own domain.
    assert moves == (Move(VmName("web-2"), HostId("h1"), HostId("h2")),)


def test_spread_moves_from_the_fullest_to_the_emptiest_while_the_gap_narrows() -> None:
    layout = {"h0": [_vm("a", 3000), _vm("b", 3000)], "h1": [], "h2": [_vm("c", 2000)]}
    plan = _plan(_cluster(layout), SPREAD)
    assert plan.moves == (Move(VmName("a"), HostId("h0"), HostId("h1")),)
    even = {"h0": [_vm("a", 3000)], "h1": [_vm("b", 3000)]}
    assert _plan(_cluster(even), SPREAD).moves == ()
    # A gap narrower than the margin is left alone.
    close = {"h0": [_vm("a", 3000)], "h1": [_vm("b", 2500)]}
    assert _plan(_cluster(close), SPREAD, spread_margin=0.2).moves == ()


# Room for 3c/6g: h0 and h1 each lack 1 core (6 of 8 used); b (1c) is the smallest VM that
# frees it; nothing is light enough to be emptied (75% full).
TIGHT = {
    "h0": [_vm("a", 5000), _vm("b", 1000)],
    "h1": [_vm("c", 4000), _vm("d", 1000), _vm("e", 1000)],
}


def _room(
    layout: Mapping[str, Sequence[RebalanceVm]],
    room_hosts: int = 1,
    budget: MigrationBudget | None = None,
    **knobs: float,
) -> Plan:
    room: dict[str, float | str] = {"room_for": "3c/6g", "room_hosts": room_hosts}
    return _plan(_cluster(layout), BINPACK, budget, **room, **knobs)


def test_binpack_makes_room_for_a_large_vm_by_moving_a_small_one_into_a_tight_hole() -> None:
    plan = _room(TIGHT)
    assert plan.moves == (Move(VmName("b"), HostId("h0"), HostId("h1")),)
    assert plan.budget.used(NOW_S) == 1  # each move counts against the hourly bound
    # h0 now has 3 cores free: a 3c VM that fitted nowhere fits without a new host.
    assert _room(TIGHT, room_hosts=0).moves == ()


def test_making_room_stops_once_enough_hosts_have_it() -> None:
    roomy = {**TIGHT, "h2": [_vm("f", 5000)]}  # 3 cores free: room already
    assert _room(roomy).moves == ()
    assert len(_room(roomy, room_hosts=2).moves) == 1


def test_making_room_never_takes_it_from_another_host() -> None:
    # b fits only on h1, which has room (3 cores) and would lose it.
    layout = {"h0": [_vm("a", 5000), _vm("b", 1000)], "h1": [_vm("c", 5000)]}
    assert _room(layout, room_hosts=2).moves == ()
    # A tight host (1 core free) takes b instead.
    tight = {**layout, "h2": [_vm("g", 7000)]}
    assert _room(tight, room_hosts=2).moves == (Move(VmName("b"), HostId("h0"), HostId("h2")),)


def test_making_room_respects_the_cool_down_and_the_hourly_bound() -> None:
    cooling = {
        "h0": [_vm("a", 5000), _vm("b", 1000, last_migrated_s=NOW_S - 60)],
        "h2": [_vm("g", 7000)],
    }
    # b is in its cool-down; a alone would free the room but fits nowhere.
    assert _room(cooling).moves == ()
    spent = MigrationBudget(tuple(NOW_S - 60 for _ in range(5)), NOW_S - 3600)
    plan = _room(TIGHT, budget=spent, max_migrations_per_hour=5)
    assert (plan.moves, plan.idle) == ((), Idle.BUDGET_SPENT)


def test_a_room_size_that_is_not_a_capacity_is_refused_when_the_config_is_read() -> None:
    with pytest.raises(ConfigError, match="room_for"):
        load_config(SchedulerConfig, None, {"rebalance": {"room_for": "lots"}})
    assert SchedulerConfig().rebalance.room == Resources(8000, 14336)
