"""Network configurations sent as changes (``UpdateNetworks``): the agent applies one only to
the configuration it is based on, in order, and the simulated backend applies it in O(its
size), refusing what it would refuse of the whole configuration."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec.structs import replace

from common.errors import NetworkError
from common.messages import ObservedState
from common.netconfig import NetConfig, digest_of
from common.network_messages import (
    ConfigureNetworks,
    EndpointRef,
    HostEndpoint,
    HostNetwork,
    NetworkChange,
    NicLease,
    UpdateNetworks,
)
from common.sumdigest import digest_text
from hostagent.netsim import SimulatedNetwork
from hostagent.stimuli import ApplyNetworks, CommandsReceived, DriverStart, NetworksApplied
from tests.unit.hostagent.test_networks import (
    VNI,
    leased_agent,
    leased_state,
    mac_of,
    network,
    start_on,
)

VNET = f"net-{VNI}"


def whole(*networks: HostNetwork, endpoints: list[HostEndpoint] | None = None) -> ConfigureNetworks:
    config = ConfigureNetworks(networks=list(networks), endpoints=endpoints or [], digest="")
    config.digest = digest_of(config)
    return config


def update_of(before: ConfigureNetworks, **changes: Any) -> UpdateNetworks:
    """The update from ``before`` with ``changes``, its digest that of its result."""
    held = NetConfig.of(before)
    update = UpdateNetworks(base=held.digest, digest="", **changes)
    update.digest = digest_text(held.total + held.shift(update))
    return update


def lease(vm: str, ip: str) -> NicLease:
    return NicLease(vm=vm, mac=mac_of(vm), ip=ip)


def leases_of(*pairs: tuple[str, str]) -> NetworkChange:
    return NetworkChange(vnet=VNET, leases_added=[lease(vm, ip) for vm, ip in pairs])


# --------------------------------------------------------------------------- the agent


def test_an_update_on_the_configuration_held_is_applied_and_its_start_runs() -> None:
    agent = leased_agent()
    first = whole(network(("vm-0", "10.1.0.9")))
    agent.execute([first], 100.0)
    update = update_of(first, changed=[leases_of(("vm-1", "10.1.0.2"))])
    agent.execute([update, start_on("vm-1", "10.1.0.2")], 100.0)
    assert agent.held() == {"vm-1": (1, ObservedState.RUNNING)}
    assert agent.network.leased() == {"vm-0": "10.1.0.9", "vm-1": "10.1.0.2"}
    assert agent.heartbeat(100.1).network_digest == update.digest


def test_an_update_on_another_configuration_is_ignored_and_the_old_digest_reported() -> None:
    """The agent restarted (it holds nothing) or lost the update before: it ignores this one,
    keeps reporting what it holds, and does not start the VM without its lease."""
    agent = leased_agent()
    first = whole(network(("vm-0", "10.1.0.9")))
    second = update_of(first, changed=[leases_of(("vm-1", "10.1.0.2"))])
    agent.execute([second, start_on("vm-1", "10.1.0.2")], 100.0)
    assert not any(isinstance(i, ApplyNetworks) for i in agent.log)
    assert agent.held() == {} and agent.network.leased() == {}
    assert agent.heartbeat(100.1).network_digest == ""
    # The scheduler sends the whole configuration: the update's result, then the start.
    agent.execute([whole(network(("vm-0", "10.1.0.9"), ("vm-1", "10.1.0.2")))], 101.0)
    agent.execute([start_on("vm-1", "10.1.0.2")], 101.0)
    assert agent.heartbeat(101.1).network_digest == second.digest
    assert agent.held() == {"vm-1": (1, ObservedState.RUNNING)}


def test_updates_that_arrive_while_one_applies_are_applied_in_order() -> None:
    state = leased_state()
    first = whole(network())
    one = update_of(first, changed=[leases_of(("a", "10.1.0.2"))])
    two = update_of(whole(network(("a", "10.1.0.2"))), changed=[leases_of(("b", "10.1.0.3"))])
    out = state.handle(CommandsReceived([first], []), 100.0)
    assert [i.config for i in out if isinstance(i, ApplyNetworks)] == [first]
    out = state.handle(CommandsReceived([one, two, start_on("b", "10.1.0.3")], []), 100.0)
    assert not any(isinstance(i, ApplyNetworks | DriverStart) for i in out)
    out = state.handle(NetworksApplied(first, frozenset({VNI}), first.digest, []), 100.1)
    assert [i.config for i in out if isinstance(i, ApplyNetworks)] == [one]
    out = state.handle(NetworksApplied(one, frozenset({VNI}), one.digest, []), 100.2)
    assert [i.config for i in out if isinstance(i, ApplyNetworks)] == [two]
    out = state.handle(NetworksApplied(two, frozenset({VNI}), two.digest, []), 100.3)
    assert [i.spec.name for i in out if isinstance(i, DriverStart)] == ["b"]


def test_a_whole_configuration_replaces_the_updates_waiting_before_it() -> None:
    state = leased_state()
    first = whole(network())
    stale = update_of(first, changed=[leases_of(("a", "10.1.0.2"))])
    newest = whole(network(("c", "10.1.0.4")))
    state.handle(CommandsReceived([first], []), 100.0)
    state.handle(CommandsReceived([stale, newest], []), 100.0)
    out = state.handle(NetworksApplied(first, frozenset({VNI}), first.digest, []), 100.1)
    assert [i.config for i in out if isinstance(i, ApplyNetworks)] == [newest]


# --------------------------------------------------------------------------- the simulated backend


async def test_an_update_gives_what_its_whole_result_gives() -> None:
    before = whole(
        network(("a", "10.1.0.2"), ("b", "10.1.0.3")),
        endpoints=[HostEndpoint(vm="a", vm_ip="10.1.0.2", vm_port=22, public_port=20000)],
    )
    after = whole(
        replace(network(("b", "10.1.0.3"), ("c", "10.1.0.4")), peers=["192.0.2.2", "192.0.2.9"]),
        network(("d", "10.2.0.2"), vni=VNI + 1, cidr="10.2.0.0/24"),
        endpoints=[HostEndpoint(vm="c", vm_ip="10.1.0.4", vm_port=22, public_port=20000)],
    )
    update = update_of(
        before,
        added=[after.networks[1]],
        changed=[
            NetworkChange(
                vnet=VNET,
                peers_added=["192.0.2.9"],
                leases_added=[lease("c", "10.1.0.4")],
                leases_removed=["a"],
            )
        ],
        endpoints_removed=[EndpointRef(public_port=20000)],
        endpoints_added=after.endpoints,
    )
    assert update.digest == after.digest  # the same digest by changes and whole
    by_changes, by_whole = SimulatedNetwork(), SimulatedNetwork()
    await by_changes.apply(before)
    await by_changes.update(update)
    await by_whole.apply(after)
    assert by_changes.applied_digest == by_whole.applied_digest == after.digest
    assert by_changes.networks == by_whole.networks
    assert by_changes.endpoints == by_whole.endpoints
    assert by_changes.bridges() == by_whole.bridges() == [f"stbr{VNI}", f"stbr{VNI + 1}"]


async def test_an_update_is_checked_by_what_it_changes_only() -> None:
    backend = SimulatedNetwork()
    peers = [f"192.0.3.{i}" for i in range(1, 251)]
    before = whole(replace(network(("a", "10.1.0.2")), peers=peers))
    await backend.apply(before)
    checked = backend.checked
    current = before
    for i in range(3, 103):
        update = update_of(current, changed=[leases_of((f"vm-{i}", f"10.1.0.{i}"))])
        await backend.update(update)
        held = NetConfig.of(current)
        held.apply(update)
        current = held.whole()
    assert backend.checked - checked == 100  # one lease each, not the 250 peers and all leases
    assert len(backend.leased()) == 101


def _refused_updates() -> list[tuple[str, dict[str, Any]]]:
    other = HostNetwork(vnet="other", vni=VNI + 1, cidr="10.1.0.0/25", gateway="10.1.0.1")
    return [
        ("lease-outside", {"changed": [leases_of(("b", "10.9.0.2"))]}),
        ("lease-on-gateway", {"changed": [leases_of(("b", "10.1.0.1"))]}),
        ("address-taken", {"changed": [leases_of(("b", "10.1.0.2"))]}),
        ("overlapping-network", {"added": [other]}),
        (
            "endpoint-to-no-lease",
            {"endpoints_added": [HostEndpoint(vm="b", vm_ip="10.1.0.7", vm_port=1, public_port=9)]},
        ),
        (
            "lease-of-an-endpoint-removed",
            {"changed": [NetworkChange(vnet=VNET, leases_removed=["a"])]},
        ),
        ("bad-peer", {"changed": [NetworkChange(vnet=VNET, peers_added=["192.0.2.300"])]}),
    ]


@pytest.mark.parametrize(
    "changes", [c for _, c in _refused_updates()], ids=[i for i, _ in _refused_updates()]
)
async def test_a_refused_update_changes_nothing(changes: dict[str, Any]) -> None:
    backend = SimulatedNetwork()
    forward = HostEndpoint(vm="a", vm_ip="10.1.0.2", vm_port=22, public_port=20000)
    before = whole(network(("a", "10.1.0.2")), endpoints=[forward])
    await backend.apply(before)
    with pytest.raises(NetworkError):
        await backend.update(update_of(before, **changes))
    assert backend.applied_digest == before.digest and backend.leased() == {"a": "10.1.0.2"}
    assert backend.endpoints == {("tcp", 20000): forward}
    # Nothing half done: a good update still applies, and gives what its whole result gives.
    good = update_of(before, changed=[leases_of(("b", "10.1.0.3"))])
    await backend.update(good)
    assert backend.leased() == {"a": "10.1.0.2", "b": "10.1.0.3"}


async def test_an_update_on_another_base_or_with_another_result_is_refused() -> None:
    backend = SimulatedNetwork()
    before = whole(network(("a", "10.1.0.2")))
    await backend.apply(before)
    good = update_of(before, changed=[leases_of(("b", "10.1.0.3"))])
    for bad in (replace(good, base="0123456789abcdef"), replace(good, digest="0123456789abcdef")):
        with pytest.raises(NetworkError):
            await backend.update(bad)
        assert backend.applied_digest == before.digest and backend.leased() == {"a": "10.1.0.2"}
    await backend.update(good)
    assert backend.applied_digest == good.digest
