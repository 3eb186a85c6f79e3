"""Random histories of requests, heartbeats, partitions and time against the pure core, with
the real agents' state machine (hostagent/state.py) over the real fake hypervisor: commands by
generation, lease, fencing and heartbeat reports are the agent's own, not a model of them.
Requests come one step each, or several in one step with or without a tick (a busy scheduler
takes what queued up in one step), those with a NIC in a network.

Whatever happens: indexes stay consistent, no host is overcommitted, no VM ever executes on
two hosts at once, and once the faults stop everything converges.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st
from msgspec.structs import replace

from common.messages import (
    CreateVm,
    Heartbeat,
    HostRef,
    ObservedState,
    VmRef,
    VmState,
)
from common.network_messages import NicRequest
from common.resources import Resources
from hostagent.state import AgentState
from hostagent.stimuli import (
    AckReceived,
)
from scheduler.core.contract import (
    Ack,
    Action,
    HeartbeatReceived,
    Input,
    Mutation,
    Op,
    SendCommands,
    Tick,
)
from scheduler.state.model import ACTIVE_STATES
from tests.unit.hostagent.syncagent import SyncAgent
from tests.unit.scheduler.corekit import CoreKit

HOSTS = ("h1", "h2", "h3")
CAPACITY = Resources(8000, 16384)


@dataclass
class SimAgent(SyncAgent):
    partitioned: bool = False
    lose_next: bool = False
    """The next message of commands to this host is lost (NATS delivers at most once)."""

    @property
    def host(self) -> str:
        return self.state.host_id


def make_agent(host: str) -> SimAgent:
    template = Heartbeat(
        host_id=host,
        seq=0,
        boot_id="boot-1",
        capacity=CAPACITY,
        fault_domain=f"fd-{HOSTS.index(host)}",
        underlay_ip=f"192.0.2.{HOSTS.index(host) + 1}",
    )
    return SimAgent(AgentState(template, heartbeat_interval_s=1.0, fence_after_s=4.0))


class World:
    def __init__(self, *, omit_unchanged: bool = False) -> None:
        self.kit = CoreKit(command_retry_s=1.0)
        self.agents = {h: make_agent(h) for h in HOSTS}
        self.omit_unchanged = omit_unchanged
        for host in HOSTS:
            self.beat(host)
        self.kit.vnet("net", "10.1.0.0/24")

    def request(self, kind: str, number: int, size: str) -> Mutation:
        """A request of a burst: a create with a NIC, or a stop, start or delete."""
        token, name = next(self.kit.tokens), f"vm-{number}"
        if kind == "create":
            body = CreateVm(name=name, size=size, nics=[NicRequest(vnet="net")])
            return Mutation(Op.CREATE, body, token)
        return Mutation(Op(kind), VmRef(name=name), token)

    def deliver(self, actions: list[Action], host: str = "") -> None:
        for action in actions:
            if isinstance(action, SendCommands):
                agent = self.agents[action.host_id]
                if agent.lose_next:
                    agent.lose_next = False
                elif not agent.partitioned:
                    agent.execute(action.commands, self.kit.t)
            if isinstance(action, Ack) and host:
                self.agents[host].handle(AckReceived(action.ack), self.kit.t)
        self.check()

    def beat(self, host: str) -> None:
        """One heartbeat of ``host``, as its state writes it; an inventory left out that the
        core lacked is sent again at once, in full."""
        agent = self.agents[host]
        if agent.partitioned:
            return
        hb = agent.heartbeat(self.kit.t)
        if not self.omit_unchanged:
            hb = replace(
                hb,
                vms=agent.state.inventory(agent.driver.inventory()),
                vms_omitted=False,
                inventory_digest="",
            )
        actions = self.kit.step(HeartbeatReceived(hb, next(self.kit.tokens)))
        self.deliver(actions, host=host)
        lacked = [
            a
            for a in actions
            if isinstance(a, Ack) and a.ack.inventory_digest != hb.inventory_digest
        ]
        if hb.vms_omitted and lacked:
            self.beat(host)

    def act_on_host(self, kind: str, arg: object) -> None:
        """A history step that is not an API call on a VM: heartbeats, faults, host ops, time."""
        if kind == "beat":
            self.beat(str(arg))
        elif kind in ("partition", "heal"):
            self.agents[str(arg)].partitioned = kind == "partition"
        elif kind in ("cordon", "uncordon", "drain"):
            self.host_op(Op(kind), str(arg))
        elif kind == "restart":
            self.kit.restart()
        elif kind == "lose":
            self.agents[str(arg)].lose_next = True
        else:
            assert isinstance(arg, float)
            self.advance(arg)

    def host_op(self, op: Op, host: str) -> None:
        # Drains move VMs by stop and start: the model agent (hostagent's AgentState) cannot
        # play live migrations until it learns them; test_migrations.py plays them by hand.
        token = next(self.kit.tokens)
        self.deliver(self.kit.step(Mutation(op, HostRef(host_id=host, cold=True), token)))

    def advance(self, dt: float) -> None:
        self.kit.t += dt
        for agent in self.agents.values():
            agent.fence(self.kit.t)  # agents notice an expired lease before the scheduler judges
        self.deliver(self.kit.advance(0.0))

    def check(self) -> None:
        executing: dict[str, list[str]] = {}
        for agent in self.agents.values():
            for name, (_, state) in agent.held().items():
                if state is ObservedState.RUNNING:
                    executing.setdefault(name, []).append(agent.host)
        assert all(len(hosts) == 1 for hosts in executing.values()), executing
        for host, allocated in self.kit.state.allocated.items():
            assert allocated.fits(CAPACITY), (host, allocated)


op = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 4), st.sampled_from(["Small", "Medium"])),
    st.tuples(st.sampled_from(["stop", "start", "delete"]), st.integers(0, 4), st.none()),
    st.tuples(st.just("beat"), st.sampled_from(HOSTS), st.none()),
    st.tuples(st.sampled_from(["partition", "heal"]), st.sampled_from(HOSTS), st.none()),
    st.tuples(st.just("advance"), st.sampled_from([0.3, 1.0, 2.5, 7.0]), st.none()),
    st.tuples(st.sampled_from(["cordon", "uncordon", "drain"]), st.sampled_from(HOSTS), st.none()),
    st.tuples(st.just("restart"), st.none(), st.none()),
    st.tuples(st.just("lose"), st.sampled_from(HOSTS), st.none()),
    st.tuples(
        st.just("burst"),
        st.lists(
            st.tuples(
                st.sampled_from(["create", "stop", "start", "delete"]),
                st.integers(0, 4),
                st.sampled_from(["Small", "Medium"]),
            ),
            min_size=2,
            max_size=6,
        ),
        st.booleans(),
    ),
)


def run_history(world: World, history: list[tuple[str, object, object]]) -> None:
    kit = world.kit
    for kind, arg, size in history:
        if kind == "create":
            kit.create(f"vm-{arg}", str(size))
            world.deliver(kit.actions)
        elif kind in ("stop", "start", "delete"):
            kit.mutate(Op(kind), VmRef(name=f"vm-{arg}"))
            world.deliver(kit.actions)
        elif kind == "burst":
            assert isinstance(arg, list)
            inputs: list[Input] = [world.request(*item) for item in arg]
            world.deliver(kit.step(*inputs, *([Tick()] if size else [])))
        else:
            world.act_on_host(kind, arg)
        world.check()


def snapshot(world: World) -> tuple[object, ...]:
    records = sorted(
        (r.name, r.state, r.host, r.generation, r.reason) for r in world.kit.state.vms.values()
    )
    agents = sorted((a.host, sorted(a.held().items())) for a in world.agents.values())
    hosts = sorted((h.host_id, h.up) for h in world.kit.state.hosts.values())
    return records, agents, hosts


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=40), st.booleans())
def test_random_histories_never_run_two_copies_and_converge(
    history: list[tuple[str, object, object]], omit_unchanged: bool
) -> None:
    world = World(omit_unchanged=omit_unchanged)
    run_history(world, history)
    converge_and_check(world)


@settings(max_examples=100, deadline=None)
@given(st.lists(op, max_size=40))
def test_inventories_sent_as_digests_change_nothing_the_core_decides(
    history: list[tuple[str, object, object]],
) -> None:
    """Agents that leave out inventories the core holds get the same decisions, step by step,
    as agents that send every inventory in full."""
    full, digests = World(), World(omit_unchanged=True)
    for item in history:
        run_history(full, [item])
        run_history(digests, [item])
        assert snapshot(full) == snapshot(digests), item


def converge_and_check(world: World) -> None:
    """The faults stop: every host is reachable and heartbeats; the system converges."""
    kit = world.kit
    for agent in world.agents.values():
        agent.partitioned = False
    for host in HOSTS:
        world.host_op(Op.UNCORDON, host)
    for _ in range(20):
        world.advance(0.5)
        for host in HOSTS:
            world.beat(host)
    for record in kit.state.vms.values():
        placed = {
            a.host: a.held()[record.name] for a in world.agents.values() if record.name in a.held()
        }
        if record.state in ACTIVE_STATES:
            assert record.state is VmState.RUNNING, record
            assert list(placed) == [record.host], (record, placed)
            assert placed[str(record.host)] == (record.generation, ObservedState.RUNNING)
        else:
            assert record.state in (
                VmState.PENDING,
                VmState.STOPPED,
                VmState.DELETED,
                VmState.FAILED,
            ), record
            assert placed == {}, (record, placed)
            assert record.state is not VmState.PENDING  # all fits: nothing waits for capacity
    assert all(record.drained_from is None for record in kit.state.vms.values())


@pytest.mark.parametrize("omit_unchanged", [False, True])
def test_a_stale_copy_whose_destroy_was_lost_is_destroyed_after_a_restart(
    omit_unchanged: bool,
) -> None:
    """h1 is cut off and declared dead; its VM runs again elsewhere. Back, h1 reports the
    fenced stale copy, but the command to destroy it is lost; then the scheduler restarts.
    The digest h1 sends matches no inventory the records predict (they place nothing on h1),
    so the scheduler must learn h1's inventory and destroy the copy."""
    world = World(omit_unchanged=omit_unchanged)
    history: list[tuple[str, object, object]] = [
        ("create", 0, "Medium"),
        *[("beat", h, None) for h in HOSTS],
    ]
    run_history(world, history)
    home = world.kit.vm("vm-0").host
    assert home is not None
    others: list[tuple[str, object, object]] = [("beat", h, None) for h in HOSTS if h != home]
    history = [
        ("partition", home, None),
        *[step for _ in range(3) for step in (("advance", 2.5, None), *others)],
        ("heal", home, None),
        ("lose", home, None),
        ("beat", home, None),
    ]
    run_history(world, history)
    record = world.kit.vm("vm-0")
    assert record.host != home and record.state is VmState.RUNNING
    assert world.agents[home].held()["vm-0"] == (1, ObservedState.PAUSED)  # the stale copy
    run_history(world, [("restart", None, None), ("beat", home, None)])
    assert "vm-0" not in world.agents[home].held()
    converge_and_check(world)
