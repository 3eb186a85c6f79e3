"""The rebalancer in the core: on each tick, ask the planner (scheduler/placement/rebalance.py)
which live migrations to start, and start them as migrations of cause ``rebalance``. Pure.

The planner runs a round at most every ``rebalance.interval_s``; between rounds a call returns
at once. What it needs comes from the records: the hosts' views (the capacity an attempt holds
on its destination included), the VMs on each host with the time of their last migration (the
cool-down), the migrations in flight per host, the draining hosts, the members of each
availability set per fault domain.

A round plans every move at once (a host is emptied completely or not at all); the core starts
them as migration slots allow (``migration_max_per_host`` at once per host), keeping the rest
queued in the step carry and trying them again at each tick. A queued move whose VM moved,
stopped or whose target no longer fits is dropped; the next round plans afresh.

Its hourly budget (``MigrationBudget``) lives in the step carry too. A scheduler that starts (or
takes over) plans its first round one interval later: the hosts' reports are not in yet, and a
round over the whole fleet would slow the reconciling that follows a restart (bench.restart).
The budget starts from the records: every VM that finished a migration in the last hour,
whatever the cause, counts against it, so a restart never lets more than
``max_migrations_per_hour`` through (it can only let fewer).
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
    """Start the moves of a due round, and those of earlier rounds still waiting for a
    migration slot (``migration_max_per_host``); how many started."""
    config = ctx.config.rebalance
    if not config.enabled:
        ctx.carry.rebalance_queue.clear()
        return 0
    now_s = ctx.now.wall.timestamp()
    budget = ctx.carry.rebalance_budget
    if budget is None:
        budget = _budget_from_records(ctx, now_s)
    last_s = budget.last_round_s
    if last_s is None or now_s - last_s >= config.interval_s:
        plan = plan_moves(_cluster(ctx), ctx.policy, config, budget, now_s)
        budget = plan.budget
        queued = {move.vm for move in ctx.carry.rebalance_queue}
        ctx.carry.rebalance_queue.extend(m for m in plan.moves if m.vm not in queued)
    ctx.carry.rebalance_budget = budget
    return _start_queued(ctx)


def _start_queued(ctx: StepContext) -> int:
    """Begin each queued move; one refused only for want of a slot waits for the next tick,
    one refused for any other reason (the VM moved, stopped, the target filled) is dropped."""
    started, waiting = 0, []
    for move in ctx.carry.rebalance_queue:
        record = ctx.state.vms.get(move.vm)
        if record is None or record.host != move.source or record.migration is not None:
            continue
        refusal = migrations.begin(ctx, record, move.target, MigrationCause.REBALANCE)
        if refusal is None:
            started += 1
        elif refusal.later:
            waiting.append(move)
    ctx.carry.rebalance_queue[:] = waiting
    return started


def _budget_from_records(ctx: StepContext, now_s: float) -> MigrationBudget:
    recent = sorted(
        t_s for t_s in migrations.last_migrated(ctx.state).values() if now_s - t_s < HOUR_S
    )
    return MigrationBudget(tuple(recent), now_s)


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
