"""Random histories of live migrations against the minimal host model of migkit.py (agents that
carry out each command at once, or lose it): at most one copy of a VM ever runs, its generation
never goes back and changes once per move, an attempt's number is never used twice, and with
the faults gone every migration ends.

The model is not the agent's own pure core (hostagent/state.py, which learns migrations
separately): when it can play them, the full property test (test_core_properties.py) should
migrate too.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from common.messages import ObservedState, VmRef
from common.migration_messages import MigrateVm
from scheduler.core.contract import Action, Mutation, Op
from tests.unit.scheduler.corekit import CoreKit
from tests.unit.scheduler.migkit import Hosts, cluster, running_vm

HOSTS = ("h1", "h2", "h3")
VMS = ("a", "b")


class World:
    def __init__(self) -> None:
        self.kit: CoreKit = cluster(*HOSTS, migration_max_per_host=2)
        for name in VMS:
            running_vm(self.kit, name, "h1")
        self.hosts = Hosts(self.kit, *HOSTS)
        self.hosts.adopt()
        self.lossy = False
        self.generations = {name: self.kit.vm(name).generation for name in VMS}
        self.attempts: dict[str, set[int]] = {name: set() for name in VMS}

    def deliver(self, actions: list[Action]) -> None:
        if not self.lossy:
            self.hosts.carry_out(actions)

    def ask(self, op: Op, body: MigrateVm | VmRef) -> None:
        self.deliver(self.kit.step(Mutation(op, body, next(self.kit.tokens))))

    def round(self, dt: float) -> None:
        for host in HOSTS:
            if self.kit.state.hosts[host].up:  # type: ignore[index]
                self.deliver(
                    self.kit.heartbeat(host, list(self.hosts.vms[host].values()), fault_domain=host)
                )
        self.deliver(self.kit.advance(dt))

    def check(self) -> None:
        for name in VMS:
            running = [
                host
                for host, vms in self.hosts.vms.items()
                if name in vms and vms[name].state is ObservedState.RUNNING
            ]
            assert len(running) <= 1, f"{name} runs on {running}"
            record = self.kit.vm(name)
            assert record.generation >= self.generations[name], "a generation went back"
            self.generations[name] = record.generation
            if record.migration is not None:
                attempt = record.migration.attempt
                if attempt not in self.attempts[name]:
                    assert all(attempt > a for a in self.attempts[name]), "an attempt reused"
                    self.attempts[name].add(attempt)
                assert attempt == record.max_generation


step = st.one_of(
    st.tuples(st.just("migrate"), st.sampled_from(VMS), st.sampled_from((None, *HOSTS))),
    st.tuples(st.just("cancel"), st.sampled_from(VMS), st.none()),
    st.tuples(st.just("round"), st.sampled_from([0.2, 0.5, 2.0]), st.none()),
    st.tuples(st.sampled_from(["lossy", "reliable"]), st.none(), st.none()),
    st.tuples(st.just("restart"), st.none(), st.none()),
    st.tuples(st.just("refuse"), st.sampled_from(VMS), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=40))
def test_random_migrations_never_run_two_copies_and_all_end(
    history: list[tuple[str, object, object]],
) -> None:
    world = World()
    for kind, arg, extra in history:
        if kind == "migrate":
            to = str(extra) if extra is not None else None
            world.ask(Op.MIGRATE, MigrateVm(name=str(arg), to=to))
        elif kind == "cancel":
            world.ask(Op.MIGRATE_CANCEL, VmRef(name=str(arg)))
        elif kind == "round":
            assert isinstance(arg, float)
            world.round(arg)
        elif kind in ("lossy", "reliable"):
            world.lossy = kind == "lossy"
        elif kind == "restart":
            world.kit.restart(reload=True)
        else:
            world.hosts.refuse_out ^= {str(arg)}
        world.check()
    world.lossy = False
    for _ in range(40):  # faults gone: repeats heal every lost command
        world.round(1.0)
        world.check()
    assert not world.kit.state.migrating, "every migration ended"
    for name in VMS:
        record = world.kit.vm(name)
        assert record.host is not None
        held = world.hosts.vms[record.host].get(name)
        assert held is not None and held.state is ObservedState.RUNNING, name
        assert held.generation == record.generation
