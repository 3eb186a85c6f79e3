"""The agent's side of networks: ConfigureNetworks is applied through the backend, reported in
every heartbeat, and a VM never starts before its network is in place."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from msgspec.structs import replace

from common.errors import DriverError, NetworkError
from common.messages import ObservedState, StartVm
from common.network_messages import (
    ConfigureNetworks,
    EndpointProtocol,
    HostEndpoint,
    HostNetwork,
    NicLease,
    NicSpec,
)
from hostagent.agent import Agent
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecLog
from hostagent.netsim import SimulatedNetwork
from hostagent.network import tap_name
from hostagent.state import AgentState
from hostagent.stimuli import (
    AckReceived,
    ApplyNetworks,
    CommandsReceived,
    DriverStart,
    HeartbeatDue,
    NetworksApplied,
    SendHeartbeat,
)
from tests.unit.hostagent.conftest import (
    TEMPLATE,
    FakeClock,
    ack_for,
    make_spec,
    make_state,
    renew,
)
from tests.unit.hostagent.syncagent import SyncAgent

VNI = 4096


def mac_of(vm: str) -> str:
    digest = hashlib.blake2b(vm.encode(), digest_size=3).hexdigest()
    return "52:54:00:" + ":".join(digest[i : i + 2] for i in (0, 2, 4))


def network(*leases: tuple[str, str], vni: int = VNI, cidr: str = "10.1.0.0/24") -> HostNetwork:
    base = cidr.split("/")[0].rsplit(".", 1)[0]
    return HostNetwork(
        vnet=f"net-{vni}",
        vni=vni,
        cidr=cidr,
        gateway=f"{base}.1",
        peers=["192.0.2.2"],
        leases=[NicLease(vm=vm, mac=mac_of(vm), ip=ip) for vm, ip in leases],
    )


def config(
    *networks: HostNetwork, endpoints: list[HostEndpoint] | None = None
) -> ConfigureNetworks:
    return ConfigureNetworks(
        networks=list(networks),
        endpoints=endpoints or [],
        digest=f"d{len(networks)}-{id(networks)}",
    )


def start_on(name: str, ip: str, *, vni: int = VNI, generation: int = 1) -> StartVm:
    nic = NicSpec(
        index=0,
        vnet=f"net-{vni}",
        vni=vni,
        mac=mac_of(name),
        ip=ip,
        prefix_len=24,
        gateway="10.1.0.1",
    )
    return StartVm(vm=replace(make_spec(name), nics=[nic]), generation=generation)


def leased_agent() -> SyncAgent:
    """An agent over the fake driver and the simulated network, its host id accepted and its
    lease fresh at t=100 s."""
    agent = SyncAgent(make_state())
    agent.handle(AckReceived(ack_for(agent.heartbeat(100.0))), 100.0)
    return agent


def leased_state() -> AgentState:
    """The agent's core alone (no shell carries out its instructions), accepted and leased."""
    state = make_state()
    [send] = state.handle(HeartbeatDue([]), 100.0)
    assert isinstance(send, SendHeartbeat)
    state.handle(AckReceived(ack_for(send.heartbeat)), 100.0)
    return state


def test_a_start_in_the_batch_of_its_network_runs_once_the_network_is_in_place() -> None:
    agent = leased_agent()
    wanted = config(network(("vm-1", "10.1.0.2")))
    agent.execute([wanted, start_on("vm-1", "10.1.0.2")], 100.0)
    kinds = [
        type(i) for i in agent.log if isinstance(i, ApplyNetworks | NetworksApplied | DriverStart)
    ]
    assert kinds[:2] == [
        ApplyNetworks,
        DriverStart,
    ]  # applied (synchronously here) before the start
    assert agent.held() == {"vm-1": (1, ObservedState.RUNNING)}
    assert agent.network.bridges() == [f"stbr{VNI}"] and agent.network.leased() == {
        "vm-1": "10.1.0.2"
    }
    assert agent.driver.taps() == {tap_name("vm-1", 0): "vm-1"}
    assert agent.heartbeat(100.1).network_digest == wanted.digest


def test_a_start_waits_while_its_network_is_being_applied() -> None:
    state = leased_state()
    wanted = config(network(("vm-1", "10.1.0.2")))
    # The state alone (no shell): the apply is issued, the start waits for it.
    out = state.handle(CommandsReceived([wanted, start_on("vm-1", "10.1.0.2")], []), 100.0)
    assert [type(i) for i in out if isinstance(i, ApplyNetworks | DriverStart)] == [ApplyNetworks]
    assert not state.idle()
    done = NetworksApplied(wanted, frozenset({VNI}), wanted.digest, [])
    out = state.handle(done, 100.1)
    assert [i.spec.name for i in out if isinstance(i, DriverStart)] == ["vm-1"]


def test_a_start_whose_network_is_not_on_the_way_is_not_started() -> None:
    agent = leased_agent()
    agent.execute([start_on("vm-1", "10.1.0.2")], 100.0)
    assert agent.held() == {}
    assert not any(isinstance(i, DriverStart) for i in agent.log)
    # The scheduler sends the configuration again (the heartbeat showed ""), then the start.
    agent.execute([config(network(("vm-1", "10.1.0.2")))], 101.0)
    agent.execute([start_on("vm-1", "10.1.0.2")], 101.0)
    assert agent.held() == {"vm-1": (1, ObservedState.RUNNING)}


def test_a_refused_configuration_changes_nothing_and_its_start_does_not_run() -> None:
    agent = leased_agent()
    good = config(network(("vm-0", "10.1.0.9")))
    agent.execute([good], 100.0)
    bad = config(network(("vm-1", "10.9.9.9")))  # a lease outside the network
    agent.execute([bad, start_on("vm-1", "10.9.9.9")], 100.0)
    assert agent.network.applied_digest == good.digest
    assert agent.heartbeat(100.1).network_digest == good.digest
    assert agent.network.leased() == {"vm-0": "10.1.0.9"}
    assert "vm-1" not in agent.held()


def test_the_newest_configuration_wins_over_one_that_arrived_while_another_applied() -> None:
    state = leased_state()
    first, second, third = (config(network(vni=VNI + i)) for i in range(3))
    applying = state.handle(CommandsReceived([first], []), 100.0)
    assert [i.config for i in applying if isinstance(i, ApplyNetworks)] == [first]
    assert state.handle(CommandsReceived([second], []), 100.0) == []
    assert state.handle(CommandsReceived([third], []), 100.0) == []
    done = NetworksApplied(first, frozenset({VNI}), first.digest, [])
    following = state.handle(done, 100.1)
    assert [i.config for i in following if isinstance(i, ApplyNetworks)] == [third]


def test_configurations_wait_for_the_host_id_like_any_command() -> None:
    state = make_state()  # no ack yet: perhaps a second agent under this host id
    out = state.handle(CommandsReceived([config(network())], []), 100.0)
    assert not any(isinstance(i, ApplyNetworks) for i in out)


@pytest.mark.parametrize(
    ("networks", "endpoints"),
    [
        ([network(("a", "10.1.0.0"))], []),
        ([network(("a", "10.1.0.1"))], []),
        ([network(("a", "10.1.0.2"), ("b", "10.1.0.2"))], []),
        ([network(vni=VNI), network(vni=VNI, cidr="10.2.0.0/24")], []),
        ([network(vni=VNI), network(vni=VNI + 1, cidr="10.1.0.0/25")], []),
        ([network(vni=0)], []),
        ([replace(network(), gateway="10.1.0.7")], []),
        ([replace(network(), peers=["192.0.2.300"])], []),
        (
            [network(("a", "10.1.0.2"))],
            [HostEndpoint(vm="a", vm_ip="10.1.0.3", vm_port=22, public_port=20000)],
        ),
        (
            [network(("a", "10.1.0.2"))],
            [
                HostEndpoint(vm="a", vm_ip="10.1.0.2", vm_port=22, public_port=20000),
                HostEndpoint(vm="a", vm_ip="10.1.0.2", vm_port=23, public_port=20000),
            ],
        ),
    ],
    ids=[
        "lease-on-network-address",
        "lease-on-gateway",
        "address-leased-twice",
        "vni-twice",
        "overlapping-ranges",
        "vni-zero",
        "gateway-not-first",
        "bad-peer",
        "endpoint-to-no-lease",
        "port-twice",
    ],
)
async def test_the_simulated_backend_refuses_what_linux_would_and_keeps_what_it_had(
    networks: list[HostNetwork], endpoints: list[HostEndpoint]
) -> None:
    backend = SimulatedNetwork()
    good = config(network(("z", "10.1.0.2")))
    await backend.apply(good)
    with pytest.raises(NetworkError):
        await backend.apply(config(*networks, endpoints=endpoints))
    assert backend.applied_digest == good.digest and backend.leased() == {"z": "10.1.0.2"}


async def test_the_simulated_backend_holds_networks_leases_and_forwards() -> None:
    backend = SimulatedNetwork()
    forward = HostEndpoint(
        vm="a", vm_ip="10.1.0.2", vm_port=53, public_port=20000, protocol=EndpointProtocol.UDP
    )
    await backend.apply(config(network(("a", "10.1.0.2")), endpoints=[forward]))
    assert backend.has_network(VNI) and not backend.has_network(VNI + 1)
    assert backend.vxlans() == [f"stvx{VNI}"]
    assert backend.endpoints == {("udp", 20000): forward}
    await backend.apply(ConfigureNetworks(digest=""))
    assert backend.bridges() == [] and backend.endpoints == {} and backend.applied_digest == ""


async def test_the_agent_applies_in_the_background_and_reports_its_underlay_address(
    execlog: ExecLog, clock: FakeClock
) -> None:
    network_backend = SimulatedNetwork()
    driver = FakeDriver(TEMPLATE.capacity)
    driver.has_network = network_backend.has_network
    template = replace(TEMPLATE, underlay_ip="192.0.2.1")
    agent = Agent(make_state(template), driver, execlog, clock, network=network_backend)
    renew(agent, clock)
    wanted = config(network(("vm-1", "10.1.0.2")))
    agent.submit([wanted, start_on("vm-1", "10.1.0.2")])
    await agent.operations.settled()
    await asyncio.sleep(0)
    await agent.operations.settled()
    assert {vm.name: vm.state for vm in agent.inventory()} == {"vm-1": ObservedState.RUNNING}
    heartbeat = agent.next_heartbeat()
    assert (heartbeat.underlay_ip, heartbeat.network_digest) == ("192.0.2.1", wanted.digest)


async def test_the_fake_driver_refuses_a_vm_whose_network_is_not_in_place() -> None:
    driver = FakeDriver(TEMPLATE.capacity)
    driver.has_network = SimulatedNetwork().has_network
    with pytest.raises(DriverError, match="not in place"):
        await driver.start(start_on("vm-1", "10.1.0.2").vm, 1)
    assert driver.inventory() == [] and driver.taps() == {}
