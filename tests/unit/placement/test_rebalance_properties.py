"""Properties of the rebalancer's plans over random clusters, for both policies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import msgspec
from hypothesis import event, given, settings, strategies as st

from common.config import RebalanceConfig
from common.ids import HostId, VmName
from common.resources import ZERO, Resources
from scheduler.placement.filters import FILTERS
from scheduler.placement.pipeline import PlacementPolicy
from scheduler.placement.rebalance import (
    MAX_ROOM_MOVES,
    Cluster,
    MigrationBudget,
    Plan,
    RebalanceVm,
    fill,
    plan_moves,
)
from scheduler.state.model import HostView, PlacementRequest

REGIONS = ("eu", "us")
DOMAINS = ("fd-a", "fd-b", "fd-c")
SETS = ("web", "db")
NOW_S = 100_000.0
SIZES = st.sampled_from([1, 1, 1, 2, 3, 4, 8])


@dataclass(frozen=True)
class Case:
    cluster: Cluster
    config: RebalanceConfig
    budget: MigrationBudget
    policy: PlacementPolicy


@st.composite
def vms_for(draw: st.DrawFn, host: int) -> list[RebalanceVm]:
    count = draw(st.sampled_from([0, 1, 1, 2, 3, 4]))
    return [
        RebalanceVm(
            name=VmName(f"vm-{host}-{n}"),
            resources=Resources(draw(SIZES) * 500, draw(SIZES) * 1024),
            availability_set=draw(st.sampled_from([None, None, *SETS])),
            last_migrated_s=draw(st.sampled_from([None] * 6 + [NOW_S - 10, NOW_S - 10_000])),
            movable=draw(st.sampled_from([True] * 9 + [False])),
        )
        for n in range(count)
    ]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    count = draw(st.integers(1, 8))
    down = draw(st.sampled_from([None] * 5 + list(range(count))))  # mostly all up: else no moves
    most_cpu, most_mem = draw(st.sampled_from([(16, 32), (24, 48)]))  # full hosts, or roomy ones
    views: list[HostView] = []
    vms: dict[HostId, list[RebalanceVm]] = {}
    in_flight: dict[HostId, int] = {}
    members: dict[str, dict[str, int]] = {}
    for n in range(count):
        host = HostId(f"h{n}")
        on_host = draw(vms_for(n))
        domain = draw(st.sampled_from(DOMAINS))
        extra = draw(st.sampled_from([ZERO] * 4 + [Resources(1000, 2048)]))  # incoming flights
        if extra != ZERO or draw(st.integers(0, 4)) == 0:
            in_flight[host] = draw(st.integers(0, 3))
        vms[host] = on_host
        for vm in on_host:
            if vm.availability_set is not None:
                counts = members.setdefault(vm.availability_set, {})
                counts[domain] = counts.get(domain, 0) + 1
        used = sum((vm.resources for vm in on_host), extra)
        views.append(
            HostView(
                host_id=host,
                region=draw(st.sampled_from([REGIONS[0]] * 3 + [REGIONS[1]])),
                fault_domain=domain,
                capacity=Resources(
                    draw(st.integers(8, most_cpu)) * 1000, draw(st.integers(8, most_mem)) * 1024
                ),
                allocated=used,
                cpu_overcommit=draw(st.sampled_from([1.0, 2.0])),
                up=n != down,
                cordoned=draw(st.sampled_from([False] * 7 + [True])),
            )
        )
    draining = draw(st.frozensets(st.sampled_from([v.host_id for v in views]), max_size=1))
    config = RebalanceConfig(
        interval_s=60.0,
        max_migrations_per_hour=draw(st.integers(0, 20)),
        cooldown_s=3600.0,
        empty_below=draw(st.sampled_from([0.3, 0.6, 1.0])),
        spread_margin=draw(st.sampled_from([0.05, 0.2])),
        max_migrations_per_host=draw(st.integers(1, 6)),
        max_hosts_per_round=draw(st.integers(1, 8)),
        room_for=draw(st.sampled_from(["2c/4g", "6c/12g"])),
        room_hosts=draw(st.sampled_from([0, 2, 8])),
    )
    history = tuple(sorted(draw(st.lists(st.floats(NOW_S - 7200, NOW_S), max_size=4))))
    return Case(
        Cluster(views, vms, draining, in_flight, members),
        config,
        MigrationBudget(history, draw(st.sampled_from([None, NOW_S - 3600]))),
        PlacementPolicy(draw(st.sampled_from(["binpack", "spread"]))),
    )


def _plan(case: Case) -> Plan:
    return plan_moves(case.cluster, case.policy, case.config, case.budget, NOW_S)


@settings(max_examples=400, deadline=None)
@given(cases())
def test_every_move_is_a_placement_the_filters_allow_with_capacity_held_on_both_ends(
    case: Case,
) -> None:
    plan = _plan(case)
    event(f"{case.policy.scorer}: {min(len(plan.moves), 3)}+ moves")
    cluster = case.cluster
    held = {view.host_id: view for view in cluster.hosts}  # sources keep holding: no release
    members = {name: dict(counts) for name, counts in cluster.set_members.items()}
    where = {vm.name: (host, vm) for host, vms in cluster.vms.items() for vm in vms}
    for move in plan.moves:
        source_host, vm = where[move.vm]
        assert source_host == move.source != move.target
        assert vm.movable
        assert vm.last_migrated_s is None or NOW_S - vm.last_migrated_s >= case.config.cooldown_s
        source = held[move.source]
        assert source.up and not source.cordoned and move.source not in cluster.draining
        assert move.target not in cluster.draining
        req = PlacementRequest(
            vm.name, vm.resources, region=source.region, availability_set=vm.availability_set
        )
        target = held[move.target]
        assert all(check(req, target) is None for check in FILTERS), "target fails a filter"
        if vm.availability_set is not None:  # the set is never less spread than before
            counts = members[vm.availability_set]
            before = max(counts.values())
            counts[source.fault_domain] -= 1
            counts[target.fault_domain] = counts.get(target.fault_domain, 0) + 1
            assert max(counts.values()) <= before
        held[move.target] = target.with_reserved(vm.resources)
    names = [move.vm for move in plan.moves]
    assert len(names) == len(set(names)), "a VM moved twice in one round"


@settings(max_examples=300, deadline=None)
@given(cases())
def test_budgets_limits_and_pauses_hold(case: Case) -> None:
    plan = _plan(case)
    config, cluster = case.config, case.cluster
    if any(not view.up for view in cluster.hosts):
        assert plan.moves == ()
    recent = case.budget.used(NOW_S)
    assert len(plan.moves) <= max(config.max_migrations_per_hour - recent, 0)
    assert plan.budget.used(NOW_S) == recent + len(plan.moves)
    touching: dict[HostId, int] = dict(cluster.in_flight)
    for move in plan.moves:
        for host in (move.source, move.target):
            touching[host] = touching.get(host, 0) + 1
    moved_hosts = {m.source for m in plan.moves} | {m.target for m in plan.moves}
    for host in moved_hosts:
        # A source that is emptied (binpack) may exceed only by its own VMs: it had none in flight.
        assert touching[host] <= config.max_migrations_per_host or (
            case.policy.scorer == "binpack" and cluster.in_flight.get(host, 0) == 0
        )
    assert len({m.source for m in plan.moves}) <= config.max_hosts_per_round
    # A second call within the interval plans nothing; the plan is the same every time, and
    # whatever order the hosts come in.
    assert _plan(replace(case, budget=plan.budget)).moves == ()
    assert _plan(case) == plan
    reordered = replace(cluster, hosts=list(reversed(cluster.hosts)))
    assert _plan(replace(case, cluster=reordered)).moves == plan.moves


@settings(max_examples=300, deadline=None)
@given(cases())
def test_binpack_frees_hosts_or_makes_room_without_taking_it(case: Case) -> None:
    case = replace(case, policy=PlacementPolicy("binpack"))
    plan = _plan(case)
    views = {view.host_id: view for view in case.cluster.hosts}
    sizes = {vm.name: vm.resources for vms in case.cluster.vms.values() for vm in vms}
    room = case.config.room
    sources = {move.source for move in plan.moves}
    targets = {move.target for move in plan.moves}
    assert not sources & targets
    room_sources = set()
    for host in sources:
        moved = {move.vm for move in plan.moves if move.source == host}
        freed = moved == {vm.name for vm in case.cluster.vms[host]}
        if freed and fill(views[host]) < case.config.empty_below:
            continue  # emptied: hosts in use drop by one
        # Otherwise it made room: a few VMs leave a host that lacked room, and it has it now.
        room_sources.add(host)
        event("made room")
        assert case.config.room_hosts > 0 and len(moved) <= MAX_ROOM_MOVES
        free_after = sum((sizes[vm] for vm in moved), views[host].free)
        assert not room.fits(views[host].free) and room.fits(free_after)
    held = dict(views)
    for move in plan.moves:  # onto hosts already in use; room is never taken from a host
        target = held[move.target]
        assert target.allocated != ZERO
        if move.source in room_sources:
            assert not room.fits(target.free)
        held[move.target] = target.with_reserved(sizes[move.vm])


@settings(max_examples=300, deadline=None)
@given(cases())
def test_spread_moves_only_narrow_gaps(case: Case) -> None:
    case = replace(case, policy=PlacementPolicy("spread"))
    plan = _plan(case)
    views = {view.host_id: view for view in case.cluster.hosts}
    sizes: Mapping[VmName, Resources] = {
        vm.name: vm.resources for vms in case.cluster.vms.values() for vm in vms
    }
    for move in plan.moves:
        source, target = views[move.source], views[move.target]
        before = fill(source)
        after_source = msgspec.structs.replace(source, allocated=source.allocated - sizes[move.vm])
        after_target = target.with_reserved(sizes[move.vm])
        assert max(fill(after_source), fill(after_target)) <= before - case.config.spread_margin
        views[move.source], views[move.target] = after_source, after_target
