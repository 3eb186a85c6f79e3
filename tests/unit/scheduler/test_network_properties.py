"""Random histories of creates (with NICs, some asking for an address), deletes, stops,
starts, host deaths and returns against the core: no address is ever held by two VMs, a VM
keeps its address and MAC across every move, released addresses are given again, and what each
host is sent equals its configuration computed from scratch.

The hosts apply what they are sent as agents do (tests/unit/scheduler/netagents.py), while
network commands are lost, come out of order and agents restart: each update applies to the
configuration it names or is ignored, its result's digest is the one it names, and in the end
every host holds its configuration computed from scratch."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from common.ids import HostId, VmName
from common.messages import VmRef, VmState
from common.network_messages import NicRequest
from scheduler.core.contract import Action, Input, Op
from scheduler.core.hostnets import desired, whole
from tests.unit.scheduler.corekit import CoreKit
from tests.unit.scheduler.netagents import HeldNets, NetworkCommand, network_commands

HOSTS = ("h1", "h2", "h3")
NETS = {"small": "10.5.0.0/29", "wide": "10.6.0.0/28"}


class Kit(CoreKit):
    """Keeps the network commands sent to each host until they are delivered."""

    def __init__(self, **config: object) -> None:
        self.inbox: dict[str, list[NetworkCommand]] = {host: [] for host in HOSTS}
        super().__init__(**config)

    def step(self, *inputs: Input) -> list[Action]:
        actions = super().step(*inputs)
        for host, inbox in self.inbox.items():
            inbox += network_commands(actions, host)
        return actions


class World:
    def __init__(self) -> None:
        self.kit = Kit(command_retry_s=1.0)
        self.held = HeldNets()
        self.alive = set(HOSTS)
        for net, cidr in NETS.items():
            self.kit.vnet(net, cidr)
        self.identity: dict[str, tuple[str, str]] = {}
        """VM -> (address, MAC) it first had (forgotten once it is deleted)."""
        self.beat_all()

    def beat_all(self) -> None:
        """Each live host reports what it was told to run (and no longer what it was told to
        stop or delete: an agent that did as it was told)."""
        gone = (VmState.STOPPING, VmState.DELETING)
        self.deliver()
        for i, host in enumerate(HOSTS):
            if host in self.alive:
                vms = self.kit.state.vms
                self.kit.heartbeat(
                    host,
                    [
                        vm
                        for vm in self.kit.running_on(host)
                        if vms[VmName(vm.name)].state not in gone
                    ],
                    fault_domain=f"fd-{i}",
                    underlay_ip=f"192.0.2.{i + 1}",
                    network_digest=self.held.digest(host),
                )
        self.check()

    def deliver(self) -> None:
        """The network commands on their way reach live hosts (and are lost to dead ones)."""
        for host, inbox in self.kit.inbox.items():
            if host in self.alive:
                for command in inbox:
                    self.held.receive(host, command)
            inbox.clear()

    def act(self, kind: str, arg: int, extra: int) -> None:
        kit, name = self.kit, f"vm-{arg}"
        if kind == "create":
            net = "small" if extra % 2 else "wide"
            ip = f"10.5.0.{2 + extra % 5}" if extra % 3 == 0 and net == "small" else None
            size = "Large" if extra % 4 == 0 else "ExtraSmall"  # Large ones spread the VMs
            kit.create(name, size, nics=[NicRequest(vnet=net, ip=ip)])
        elif kind in ("stop", "start", "delete"):
            kit.mutate(Op(kind), VmRef(name=name))
        elif kind == "kill":
            self.alive.discard(HOSTS[arg % 3])
        elif kind == "revive":
            self.alive.add(HOSTS[arg % 3])
        elif kind == "advance":
            kit.advance(2.5)
        elif kind == "lose":
            del kit.inbox[HOSTS[arg % 3]][:1]
        elif kind == "swap":
            inbox = kit.inbox[HOSTS[arg % 3]]
            inbox[:2] = inbox[1::-1]
        elif kind == "restart":
            self.held.restart(HOSTS[arg % 3])
        self.check()
        self.beat_all()

    def check(self) -> None:
        state = self.kit.state
        state.check_invariants()  # includes: no address held twice, indexes as from scratch
        for record in state.vms.values():
            if record.state is VmState.DELETED:
                self.identity.pop(record.name, None)
            if record.state is VmState.DELETED or not record.nics or not record.nics[0].ip:
                continue
            nic = record.nics[0]
            first = self.identity.setdefault(record.name, (nic.ip, nic.mac))
            assert first == (nic.ip, nic.mac), (record.name, first, nic)


step = st.tuples(
    st.sampled_from(
        [
            *("create", "create", "stop", "start", "delete", "kill", "revive"),
            *("advance", "advance", "lose", "swap", "restart"),
        ]
    ),
    st.integers(0, 9),
    st.integers(0, 30),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=10, max_size=60))
def test_addresses_are_never_shared_kept_across_moves_reused_and_hosts_get_the_truth(
    history: list[tuple[str, int, int]],
) -> None:
    world = World()
    for kind, arg, extra in history:
        world.act(kind, arg, extra)
    world.alive = set(HOSTS)
    for _ in range(6):
        world.kit.advance(0.5)
        world.beat_all()
    state = world.kit.state
    for record in state.vms.values():
        if record.state is VmState.PENDING and record.nics:
            ipam = state.net.ipams[record.nics[0].vnet]
            # Waiting for an address only while the network is full.
            assert record.nics[0].ip or ipam.used == ipam.total, record
    world.kit.advance(0.2)  # peers reach every host at a tick
    for host in HOSTS:
        sent = world.kit.core.carry.networks.hosts.get(HostId(host))
        if sent is not None:
            assert whole(sent, world.kit.core.carry.networks) == desired(state, HostId(host)), host
    # What was lost or ignored goes whole once the host reports another digest for
    # command_retry_s: every host ends up holding its configuration from scratch.
    for _ in range(4):
        world.kit.advance(0.6)
        world.beat_all()
    world.deliver()
    for host in HOSTS:
        assert world.held.whole(host) == desired(state, HostId(host)), host
