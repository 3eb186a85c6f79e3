"""The rebalancer in the core: on each tick, ask the planner (scheduler/placement/rebalance.py)
which live migrations to start, and start them as migrations of cause ``rebalance``. Pure.

The planner runs a round at most every ``rebalance.interval_s``; between rounds a call returns
at once. What it needs comes from the records: the hosts' views (the capacity an attempt holds
on its destination included), the VMs on each host with the time of their last migration (the
cool-down), the migrations in flight per host, the draining hosts, the members of each
availability set per fault domain.

Its hourly budget (``MigrationBudget``) lives in the step carry. After a restart it starts from
the records: every VM that finished a migration in the last hour, whatever the cause, counts
against it, so a restart never lets more than ``max_migrations_per_hour`` through (it can only
let fewer).
"""

from __future__ import annotations

from collections import defaultdict

from common.ids import HostId
from common.messages import VmState
from common.migration_messages import MigrationCause
from scheduler.core import migrations
from scheduler.core.context import StepContext
from scheduler.placement.rebalance import (
    HOUR_S,
    Cluster,
    MigrationBudget,
    RebalanceVm,
    plan_moves,
)


def rebalance(ctx: StepContext) -> int:
    """Start the moves a due round plans; how many started."""
    config = ctx.config.rebalance
    if not config.enabled:
        return 0
    now_s = ctx.now.wall.timestamp()
    budget = ctx.carry.rebalance_budget
    if budget is None:
        budget = _budget_from_records(ctx, now_s)
    last_s = budget.last_round_s
    if last_s is not None and now_s - last_s < config.interval_s:
        return 0  # not due: the cluster is not even looked at
    plan = plan_moves(_cluster(ctx), ctx.policy, config, budget, now_s)
    ctx.carry.rebalance_budget = plan.budget
    started = 0
    for move in plan.moves:
        record = ctx.state.vms.get(move.vm)
        if record is None or record.host != move.source:
            continue
        if migrations.begin(ctx, record, move.target, MigrationCause.REBALANCE) is None:
            started += 1
    return started


def _budget_from_records(ctx: StepContext, now_s: float) -> MigrationBudget:
    recent = sorted(
        t_s for t_s in migrations.last_migrated(ctx.state).values() if now_s - t_s < HOUR_S
    )
    return MigrationBudget(tuple(recent), None)


def _cluster(ctx: StepContext) -> Cluster:
    state = ctx.state
    last = migrations.last_migrated(state)
    on_hosts: dict[HostId, list[RebalanceVm]] = defaultdict(list)
    members: dict[str, dict[str, int]] = defaultdict(dict)
    for host, names in state.by_host.items():
        record_host = state.hosts.get(host)
        if record_host is None:
            continue
        live = migrations.driver_family(record_host.driver) in migrations.LIVE_DRIVERS
        for name in names:
            vm = state.vms[name]
            movable = live and vm.state is VmState.RUNNING and vm.migration is None
            on_hosts[host].append(
                RebalanceVm(vm.name, vm.resources, vm.availability_set, last.get(name), movable)
            )
            if vm.availability_set is not None:
                domain = record_host.fault_domain
                counts = members[vm.availability_set]
                counts[domain] = counts.get(domain, 0) + 1
    return Cluster(
        hosts=list(ctx.views.all().values()),
        vms=on_hosts,
        draining=frozenset(h for h, record in state.hosts.items() if record.draining),
        in_flight=migrations.in_flight(state),
        set_members=members,
    )
