"""The simulated network backend checks only what changed between two configurations, and
refuses exactly what a check of the whole configuration refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from msgspec.structs import replace

from common.errors import NetworkError
from common.network_messages import (
    ConfigureNetworks,
    EndpointProtocol,
    HostEndpoint,
    HostNetwork,
    NicLease,
)
from hostagent.netsim import SimulatedNetwork

VNI = 4096


def lease(n: int, *, ip: str | None = None, mac: str | None = None) -> NicLease:
    return NicLease(
        vm=f"vm-{n}",
        mac=mac or f"52:54:00:00:{n // 256:02x}:{n % 256:02x}",
        ip=ip or f"10.1.{n // 250}.{n % 250 + 2}",
    )


def network(leases: list[NicLease], *, peers: int = 300) -> HostNetwork:
    return HostNetwork(
        vnet="net",
        vni=VNI,
        cidr="10.1.0.0/16",
        gateway="10.1.0.1",
        peers=[f"192.0.{p // 250}.{p % 250 + 1}" for p in range(peers)],
        leases=leases,
    )


def configure(
    *networks: HostNetwork, endpoints: list[HostEndpoint] | None = None
) -> ConfigureNetworks:
    return ConfigureNetworks(networks=list(networks), endpoints=endpoints or [], digest="d")


async def test_a_burst_of_starts_checks_each_new_lease_once_not_the_whole_host_again() -> None:
    backend = SimulatedNetwork()
    await backend.apply(configure(network([lease(0)])))
    first = backend.checked  # the network, its 300 peers, its lease
    assert first == 1 + 300 + 1
    for count in range(2, 201):  # one more VM on the host per configuration
        await backend.apply(configure(network([lease(n) for n in range(count)])))
    assert backend.checked - first == 199  # the new lease of each; 200 x 200 / 2 before
    assert len(backend.leased()) == 200 and backend.applied == 200


async def test_a_change_is_still_checked_against_what_is_in_place() -> None:
    backend = SimulatedNetwork()
    placed = [lease(n) for n in range(50)]
    good = configure(network(placed))
    await backend.apply(good)
    for bad in (
        lease(99, ip=placed[7].ip),  # an address leased already
        lease(99, mac=placed[3].mac),  # a MAC leased already
        lease(99, ip="10.2.0.9"),  # outside the range
        lease(99, ip="10.1.0.1"),  # the gateway
    ):
        with pytest.raises(NetworkError):
            await backend.apply(configure(network([*placed, bad])))
        assert backend.leased() == {x.vm: x.ip for x in placed}
    # What a removed lease held is free again: the address goes to another VM.
    moved = lease(99, ip=placed[7].ip)
    await backend.apply(configure(network([*placed[:7], *placed[8:], moved])))
    assert backend.leased()["vm-99"] == placed[7].ip and "vm-7" not in backend.leased()
    # An endpoint to an address that is no longer leased is refused.
    forward = HostEndpoint(vm="vm-9", vm_ip=placed[9].ip, vm_port=22, public_port=20022)
    await backend.apply(configure(network(placed), endpoints=[forward]))
    with pytest.raises(NetworkError, match="no VM leased"):
        await backend.apply(configure(network(placed[:9]), endpoints=[forward]))
    # An endpoint in place that changes is checked again.
    for changed in (replace(forward, vm_port=0), replace(forward, allow=["10.0.0.1/8"])):
        with pytest.raises(NetworkError):
            await backend.apply(configure(network(placed), endpoints=[changed]))
    assert backend.endpoints == {("tcp", 20022): forward}


# --------------------------------------------------------------------------- agreement

# Mostly what a scheduler sends, sometimes what Linux would refuse.
_RANGES = {VNI: ("10.1.0.0/24", "10.1.0.1"), VNI + 1: ("10.2.0.0/24", "10.2.0.1")}
_ODD_RANGES = [
    ("10.1.0.0/25", "10.1.0.1"),
    ("10.1.0.0/24", "10.1.0.7"),
    ("10.1.0.0/33", "10.1.0.1"),
]
_ODD_HOSTS = ["1", "0", "255", "02", "x"]
_PEERS = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def _often(usual: list[str], odd: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(usual * 4 * len(odd) + odd)


@st.composite
def _networks(draw: st.DrawFn) -> HostNetwork:
    vni = draw(st.sampled_from([VNI] * 5 + [VNI + 1] * 4 + [0]))
    usual = _RANGES.get(vni, _RANGES[VNI])
    cidr, gateway = draw(st.sampled_from([usual] * 8 + [*_RANGES.values(), *_ODD_RANGES]))
    prefix = cidr.rsplit(".", 1)[0]
    # Each VM has its own address and MAC, the same in every configuration, but for the odd
    # one: "e" has the MAC of "a", and an address may be taken, reserved or malformed.
    vms = _often(["a", "b", "c", "d"], ["e"])
    hosts = st.sampled_from([None] * 30 + [*_ODD_HOSTS, "2"])
    leases = st.builds(lambda vm, host: _lease(vm, prefix, host), vms, hosts)
    return HostNetwork(
        vnet=f"net-{vni}",
        vni=vni,
        cidr=cidr,
        gateway=gateway,
        mtu=draw(st.sampled_from([1450] * 9 + [9001])),
        peers=draw(
            st.lists(
                _often(_PEERS, ["192.0.2.300"]),
                max_size=3,
                unique=draw(st.sampled_from([True] * 9 + [False])),
            )
        ),
        leases=draw(st.lists(leases, max_size=4, unique_by=lambda x: x.vm)),
    )


def _lease(vm: str, prefix: str, host: str | None) -> NicLease:
    mac = ord("a" if vm == "e" else vm)
    return NicLease(vm=vm, mac=f"52:54:00:00:00:{mac:02x}", ip=f"{prefix}.{host or ord(vm) - 95}")


def _endpoints(addresses: list[str]) -> st.SearchStrategy[HostEndpoint]:
    return st.builds(
        HostEndpoint,
        vm=st.just("a"),
        vm_ip=_often(addresses, ["10.1.0.9"]),
        vm_port=st.sampled_from([22] * 9 + [0]),
        public_port=st.sampled_from([20000, 20001]),
        protocol=st.sampled_from(list(EndpointProtocol)),
        allow=st.lists(_often(["10.0.0.0/8"], ["10.0.0.1/8"]), max_size=1),
    )


def _mostly_unique(
    items: st.SearchStrategy[Any], key: Callable[[Any], object]
) -> st.SearchStrategy[list[Any]]:
    unique = st.lists(items, max_size=2, unique_by=key)
    return st.one_of(unique, unique, unique, st.lists(items, max_size=2))


@st.composite
def _configs(draw: st.DrawFn) -> tuple[list[HostNetwork], list[HostEndpoint]]:
    networks = draw(_mostly_unique(_networks(), lambda n: n.vni))
    addresses = [lease.ip for network in networks for lease in network.leases]
    endpoints = draw(_mostly_unique(_endpoints(addresses or ["10.1.0.2"]), lambda e: e.public_port))
    with_endpoints: bool = bool(addresses) and draw(st.booleans())
    return networks, endpoints if with_endpoints else []


@settings(max_examples=300, deadline=None)
@given(st.lists(_configs(), min_size=1, max_size=8))
def test_applying_by_difference_refuses_what_the_whole_check_refuses(
    history: list[tuple[list[HostNetwork], list[HostEndpoint]]],
) -> None:
    backend = SimulatedNetwork()
    for n, (networks, endpoints) in enumerate(history):
        config = ConfigureNetworks(networks=networks, endpoints=endpoints, digest=f"d{n}")
        refused = SimulatedNetwork().problems(config)
        before = (backend.applied_digest, backend.networks, backend.endpoints)
        try:
            asyncio.run(backend.apply(config))
        except NetworkError:
            assert refused, config
            assert (backend.applied_digest, backend.networks, backend.endpoints) == before
        else:
            assert not refused, (config, refused)
            assert backend.applied_digest == config.digest
            assert backend.networks == {network.vni: network for network in networks}
