"""The rebalancer wired into the core: a due round starts live migrations of cause rebalance,
through the same begin as ``vm migrate``; rounds are rate-limited; a restart keeps the budget."""

from __future__ import annotations

from common.messages import PrepareIncoming
from common.migration_messages import MigrationCause
from scheduler.core.contract import Action, Op
from tests.unit.scheduler.corekit import EPOCH, CoreKit, commands
from tests.unit.scheduler.migkit import beat, cluster, running_vm


def two_half_empty_hosts(**config: object) -> CoreKit:
    kit = cluster("h1", "h2", "h3", **config)
    running_vm(kit, "a", "h1")
    running_vm(kit, "b", "h2")
    return kit


def migrating(kit: CoreKit) -> dict[str, tuple[str, str, MigrationCause]]:
    return {
        name: (m.source, m.target, m.cause)
        for name, record in kit.state.vms.items()
        if (m := record.migration) is not None
    }


def last_round(kit: CoreKit) -> float | None:
    budget = kit.core.carry.rebalance_budget
    if budget is None or budget.last_round_s is None:
        return None
    return budget.last_round_s - EPOCH.timestamp()


SHORT = {"interval_s": 2.0}
"""A round interval shorter than dead_after_s, so that hosts need no heartbeats meanwhile."""


def first_round(kit: CoreKit) -> list[Action]:
    """Tick once (a scheduler that starts leading waits one interval before its first round:
    the hosts' reports are not in yet), then once the interval is over."""
    kit.advance(1.0)
    assert migrating(kit) == {}
    kit.advance(1.0)
    assert migrating(kit) == {}
    return kit.advance(1.0)


def test_a_due_round_frees_a_lightly_used_host_by_live_migration() -> None:
    kit = two_half_empty_hosts(rebalance=SHORT)
    actions = first_round(kit)
    moves = migrating(kit)
    assert len(moves) == 1, moves
    [(name, (source, target, cause))] = moves.items()
    assert cause is MigrationCause.REBALANCE and {source, target} == {"h1", "h2"}
    prepared = [c for c in commands(actions, target) if isinstance(c, PrepareIncoming)]
    assert [c.vm.name for c in prepared] == [name]


def test_switched_off_or_without_budget_the_rebalancer_plans_nothing() -> None:
    for knobs in ({"enabled": False}, {"max_migrations_per_hour": 0, **SHORT}):
        kit = two_half_empty_hosts(rebalance=knobs)
        first_round(kit)
        assert migrating(kit) == {}, knobs


def test_a_round_is_not_repeated_before_its_interval() -> None:
    kit = two_half_empty_hosts(rebalance={"interval_s": 600.0, "max_migrations_per_host": 1})
    kit.advance(1.0)
    assert last_round(kit) == 1.0
    kit.advance(100.0)
    assert last_round(kit) == 1.0
    kit.advance(600.0)
    assert last_round(kit) == 701.0


def test_moves_beyond_the_hosts_migration_slots_wait_their_turn() -> None:
    kit = cluster("h1", "h2", "h3", migration_max_per_host=1, rebalance=SHORT)
    running_vm(kit, "a", "h1")
    running_vm(kit, "big", "h1")
    for name in ("b", "c", "d"):
        running_vm(kit, name, "h2")
    first_round(kit)
    moving = migrating(kit)
    assert len(moving) == 1, moving
    waiting = kit.core.carry.rebalance_queue
    assert len(waiting) >= 1 and all(m.vm not in moving for m in waiting)
    kit.advance(1.0)  # the slot is still taken: nothing more starts, nothing is dropped
    assert len(migrating(kit)) == 1 and kit.core.carry.rebalance_queue == waiting


def sized_vm(kit: CoreKit, name: str, host: str, size: str) -> None:
    """Create ``name`` of ``size`` on ``host`` (the other hosts cordoned meanwhile), running."""
    others = [h for h in kit.state.hosts if h != host]
    for other in others:
        kit.host_op(Op.CORDON, other)
    kit.create(name, size)
    for other in others:
        kit.host_op(Op.UNCORDON, other)
    beat(kit, host, kit.running_on(host))
    assert kit.vm(name).host == host


def test_a_round_makes_room_for_a_large_vm_by_live_migrating_a_small_one() -> None:
    # Both hosts (8 cores) run 7 cores: neither has room for 2 cores, nor is light enough to
    # be emptied. Moving h1's small VM into h2's last core gives h1 room for 2 cores.
    kit = cluster("h1", "h2", rebalance={**SHORT, "room_for": "2c/3g", "room_hosts": 1})
    for host in ("h1", "h2"):
        for size in ("Large", "Medium", "Small"):
            sized_vm(kit, f"{host}-{size.lower()}", host, size)
    first_round(kit)
    assert migrating(kit) == {"h1-small": ("h1", "h2", MigrationCause.REBALANCE)}
