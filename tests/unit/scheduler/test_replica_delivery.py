"""Random histories of replicated VMs (creates, stops, starts, deletes, hosts dead and back)
against agents that apply their replica sets with the agent's own parts
(tests/unit/scheduler/replagents.py), while replica commands are lost, duplicated and come out of
order and agents restart: each update applies to the set it names or is ignored, its result's
digest is the one it names, and in the end every host holds its set computed from scratch."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from common.ids import HostId, VmName
from common.messages import (
    DeleteVm,
    DiskStorage,
    ObservedState,
    ObservedVm,
    StartVm,
    StopVm,
    VmRef,
    VmState,
)
from common.replica_messages import UpdateReplicas
from scheduler.core import hostreplicas
from scheduler.core.contract import Action, Input, Op, SendCommands
from tests.unit.scheduler.corekit import CoreKit
from tests.unit.scheduler.replagents import HeldReplicas, ReplicaSetCommand, replica_commands

HOSTS = {"h1": "fd-a", "h2": "fd-a", "h3": "fd-b", "h4": "fd-c"}
PORT = 10809


class Kit(CoreKit):
    """Keeps the replica commands sent to each host until they are delivered, and which VMs
    each host was told to run."""

    def __init__(self, **config: object) -> None:
        self.inbox: dict[str, list[ReplicaSetCommand]] = {host: [] for host in HOSTS}
        self.running: dict[str, dict[VmName, StartVm]] = {host: {} for host in HOSTS}
        super().__init__(**config)

    def step(self, *inputs: Input) -> list[Action]:
        actions = super().step(*inputs)
        for host, inbox in self.inbox.items():
            inbox += replica_commands(actions, host)
        for action in actions:
            if isinstance(action, SendCommands):
                self._run(action)
        return actions

    def _run(self, action: SendCommands) -> None:
        running = self.running[action.host_id]
        for command in action.commands:
            if isinstance(command, StartVm):
                running[VmName(command.vm.name)] = command
            elif isinstance(command, StopVm | DeleteVm):
                running.pop(VmName(command.name), None)


class World:
    def __init__(self) -> None:
        self.kit = Kit(command_retry_s=1.0, storage={"replicas": 2})
        self.held = HeldReplicas(lambda: self.kit.t)
        self.alive = set(HOSTS)
        self.beat_all()

    def beat_all(self) -> None:
        """The commands on their way reach live hosts; each live host reports what it runs and
        the replica set it holds."""
        self.deliver()
        for host, domain in HOSTS.items():
            if host in self.alive:
                vms = [
                    ObservedVm(
                        name=name,
                        generation=start.generation,
                        state=ObservedState.RUNNING,
                        cpu_milli=start.vm.cpu_milli,
                        mem_mib=start.vm.mem_mib,
                    )
                    for name, start in sorted(self.kit.running[host].items())
                ]
                self.kit.heartbeat(
                    host,
                    vms,
                    fault_domain=domain,
                    replica_port=PORT,
                    replica_digest=self.held.digest(host),
                    replicas=self.held.statuses(host),
                )

    def deliver(self) -> None:
        """The replica commands on their way reach live hosts (and are lost to dead ones)."""
        for host, inbox in self.kit.inbox.items():
            if host in self.alive:
                for command in inbox:
                    self.held.receive(host, command)
            inbox.clear()

    def act(self, kind: str, arg: int) -> None:
        kit, name, host = self.kit, f"vm-{arg % 6}", sorted(HOSTS)[arg % len(HOSTS)]
        inbox = kit.inbox[host]
        if kind == "create":
            record = kit.state.vms.get(VmName(name))
            if record is None or record.state is VmState.DELETED:
                data = [[], [256], [256, 512]][arg % 3]
                kit.create(name, "ExtraSmall", storage=DiskStorage.REPLICATED, data_disks_mib=data)
        elif kind in ("stop", "start", "delete"):
            if VmName(name) in kit.state.vms:
                kit.mutate(Op(kind), VmRef(name=name))
        elif kind == "kill" and len(self.alive) > 3:
            self.alive.discard(host)
            kit.running[host].clear()
        elif kind == "revive":
            self.alive.add(host)
        elif kind == "advance":
            kit.advance(2.5)
        elif kind == "lose":
            del inbox[:1]
        elif kind == "swap":
            inbox[:2] = inbox[1::-1]
        elif kind == "duplicate":
            inbox[:1] = inbox[:1] * 2
        elif kind == "restart":
            self.held.restart(host)
        self.beat_all()


step = st.tuples(
    st.sampled_from(
        [
            *("create", "create", "create", "stop", "start", "delete", "kill", "revive"),
            *("advance", "lose", "lose", "swap", "swap", "duplicate", "restart"),
        ]
    ),
    st.integers(0, 11),
)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(step, min_size=5, max_size=50))
def test_hosts_that_lose_reorder_and_repeat_replica_commands_end_holding_their_set(
    history: list[tuple[str, int]],
) -> None:
    world = World()
    for kind, arg in history:
        world.act(kind, arg)
    world.alive = set(HOSTS)
    for _ in range(6):  # what was lost or ignored goes whole after command_retry_s
        world.kit.advance(0.6)
        world.beat_all()
    world.deliver()
    state, rate = world.kit.state, world.kit.config.storage.rebuild_mib_per_s
    for host in HOSTS:
        wanted = hostreplicas.desired(state, HostId(host), rate)
        backend = world.held.backend(host)
        assert world.held.digest(host) == wanted.digest, host
        assert backend.replica_set.whole().replicas == wanted.replicas, host  # made: not told
        lost = {s.disk_id for s in backend.statuses() if s.state.value == "lost"}
        assert set(backend.held) | lost == {r.disk_id for r in wanted.replicas}, host
        sent = world.kit.core.carry.replicas.get(HostId(host))
        if sent is not None:  # what the scheduler keeps of it, changed disk by disk, is the same
            assert sent.replicas.whole() == wanted, host


def test_a_lost_update_is_ignored_after_it_and_the_whole_set_heals_the_host() -> None:
    world = World()
    for vm in "abcd":  # 8 copies on 4 hosts: one host gets two updates in a row
        world.kit.create(vm, "ExtraSmall", storage=DiskStorage.REPLICATED)
    host, inbox = next((h, box) for h, box in world.kit.inbox.items() if len(box) >= 2)
    first, second = inbox[:2]
    assert isinstance(first, UpdateReplicas) and isinstance(second, UpdateReplicas)
    assert (first.base, second.base) == ("", first.digest)
    del inbox[0]  # lost on the way
    after = len(inbox)
    world.beat_all()
    assert world.held.ignored == after  # those after it do not apply on the set it holds
    assert world.held.digest(host) == ""
    waiting = {vm for vm in "abcd" if world.kit.vm(vm).state is not VmState.RUNNING}
    assert waiting  # a VM with a copy there waits: its copy is not ready
    for _ in range(5):  # the whole set after command_retry_s, the copies ready, the starts
        world.kit.advance(0.6)
        world.beat_all()
    rate = world.kit.config.storage.rebuild_mib_per_s
    wanted = hostreplicas.desired(world.kit.state, HostId(host), rate)
    assert world.held.digest(host) == wanted.digest
    for vm in "abcd":
        assert world.kit.vm(vm).state is VmState.RUNNING, world.kit.vm(vm).reason
