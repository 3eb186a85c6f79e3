"""Random histories of creates (with NICs, some asking for an address), deletes, stops,
starts, host deaths and returns against the core: no address is ever held by two VMs, a VM
keeps its address and MAC across every move, released addresses are given again, and what each
host is sent equals its configuration computed from scratch."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from common.ids import HostId, VmName
from common.messages import VmRef, VmState
from common.network_messages import NicRequest
from scheduler.core.contract import Op
from scheduler.core.hostnets import desired, whole
from tests.unit.scheduler.corekit import CoreKit

HOSTS = ("h1", "h2", "h3")
NETS = {"small": "10.5.0.0/29", "wide": "10.6.0.0/28"}


class World:
    def __init__(self) -> None:
        self.kit = CoreKit(command_retry_s=1.0)
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
                )
        self.check()

    def act(self, kind: str, arg: int, extra: int) -> None:
        kit, name = self.kit, f"vm-{arg}"
        if kind == "create":
            net = "small" if extra % 2 else "wide"
            ip = f"10.5.0.{2 + extra % 5}" if extra % 3 == 0 and net == "small" else None
            kit.create(name, "ExtraSmall", nics=[NicRequest(vnet=net, ip=ip)])
        elif kind in ("stop", "start", "delete"):
            kit.mutate(Op(kind), VmRef(name=name))
        elif kind == "kill":
            self.alive.discard(HOSTS[arg % 3])
        elif kind == "revive":
            self.alive.add(HOSTS[arg % 3])
        elif kind == "advance":
            kit.advance(2.5)
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
    st.sampled_from(["create", "create", "stop", "start", "delete", "kill", "revive", "advance"]),
    st.integers(0, 9),
    st.integers(0, 30),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(step, max_size=60))
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
