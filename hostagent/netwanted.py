"""What a host's networking must look like, checked: a ``ConfigureNetworks`` turned into values
the planner can trust (parsed addresses, derived names), or ``NetworkError`` naming the first
thing wrong with it. Pure: no I/O; a bad configuration is refused before anything is touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from common.errors import NetworkError
from common.network_messages import (
    ConfigureNetworks,
    EndpointProtocol,
    HostEndpoint,
    HostNetwork,
    NicLease,
)
from hostagent.network import bridge_name, vxlan_name

MAX_VNI = 2**24 - 1
MIN_MTU = 576
MAX_MTU = 9000
MAX_PREFIX_LEN = 30
"""A /30 still holds the gateway and one guest; longer prefixes hold no guest."""
GATEWAY_MAC_PREFIX = "02:73:74"
"""Locally administered; the rest of a gateway's MAC is its network's VNI (see
:func:`gateway_mac`)."""
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME = re.compile(r"^[a-z0-9-]{1,63}$")


def gateway_mac(vni: int) -> str:
    """The MAC of a network's gateway (its bridge), the same on every host that carries it.

    A guest keeps whatever MAC it resolved for its gateway; with one MAC everywhere its frames to
    the gateway reach the bridge of whichever host it runs on (also after a move), and no other
    host can claim the gateway address under a MAC of its own (see hostagent/netrender.py)."""
    return f"{GATEWAY_MAC_PREFIX}:{vni >> 16 & 0xFF:02x}:{vni >> 8 & 0xFF:02x}:{vni & 0xFF:02x}"


@dataclass(frozen=True, slots=True)
class WantedNetwork:
    vnet: str
    vni: int
    network: IPv4Network
    gateway: IPv4Address
    mtu: int
    peers: frozenset[str]
    leases: tuple[NicLease, ...]
    """Sorted by address."""

    @property
    def bridge(self) -> str:
        return bridge_name(self.vni)

    @property
    def vxlan(self) -> str:
        return vxlan_name(self.vni)

    @property
    def gateway_mac(self) -> str:
        return gateway_mac(self.vni)

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{self.network.prefixlen}"


@dataclass(frozen=True, slots=True)
class WantedEndpoint:
    vm: str
    vm_ip: IPv4Address
    vm_port: int
    public_port: int
    protocol: EndpointProtocol
    allow: tuple[IPv4Network, ...]


@dataclass(frozen=True, slots=True)
class Wanted:
    networks: tuple[WantedNetwork, ...]
    """Sorted by VNI."""
    endpoints: tuple[WantedEndpoint, ...]
    """Sorted by (protocol, public port)."""
    digest: str

    @property
    def empty(self) -> bool:
        return not self.networks and not self.endpoints

    def network(self, vni: int) -> WantedNetwork | None:
        return next((net for net in self.networks if net.vni == vni), None)


NOTHING = Wanted((), (), "")
"""Before the first configuration: no networks, no endpoints."""


def check_config(config: ConfigureNetworks, *, underlay_ip: str) -> Wanted:
    """``config`` as checked values; ``NetworkError`` naming the first thing that is wrong."""
    networks = tuple(sorted((_network(net, underlay_ip) for net in config.networks), key=_vni))
    _unique("vni", [net.vni for net in networks])
    _unique("network name", [net.vnet for net in networks])
    for i, net in enumerate(networks):
        for other in networks[i + 1 :]:
            if net.network.overlaps(other.network):
                raise NetworkError(
                    f"networks {net.vnet} ({net.network}) and {other.vnet} ({other.network}) "
                    "overlap"
                )
    endpoints = tuple(
        sorted((_endpoint(ep, networks) for ep in config.endpoints), key=_endpoint_key)
    )
    _unique("endpoint port", [f"{ep.protocol}/{ep.public_port}" for ep in endpoints])
    return Wanted(networks, endpoints, config.digest)


def _vni(net: WantedNetwork) -> int:
    return net.vni


def _endpoint_key(ep: WantedEndpoint) -> tuple[str, int]:
    return (ep.protocol.value, ep.public_port)


def _unique(what: str, values: Iterable[object]) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise NetworkError(f"{what} {value} appears twice")
        seen.add(value)


def _ipv4(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError as exc:
        raise NetworkError(f"{what} {text!r} is not an IPv4 address") from exc


def _cidr(text: str, what: str, *, strict: bool) -> IPv4Network:
    try:
        return IPv4Network(text, strict=strict)
    except ValueError as exc:
        raise NetworkError(f"{what} {text!r} is not an IPv4 range: {exc}") from exc


def _network(net: HostNetwork, underlay_ip: str) -> WantedNetwork:
    where = f"network {net.vnet}"
    if not 1 <= net.vni <= MAX_VNI:
        raise NetworkError(f"{where}: vni {net.vni} is outside 1..{MAX_VNI}")
    if not MIN_MTU <= net.mtu <= MAX_MTU:
        raise NetworkError(f"{where}: mtu {net.mtu} is outside {MIN_MTU}..{MAX_MTU}")
    network = _cidr(net.cidr, f"{where}: cidr", strict=True)
    if network.prefixlen > MAX_PREFIX_LEN:
        raise NetworkError(f"{where}: {network} holds no guest (at most /{MAX_PREFIX_LEN})")
    gateway = _ipv4(net.gateway, f"{where}: gateway")
    _check_host_address(gateway, network, f"{where}: gateway")
    peers = frozenset(str(_ipv4(peer, f"{where}: peer")) for peer in net.peers)
    if underlay_ip and underlay_ip in peers:
        raise NetworkError(f"{where}: peer {underlay_ip} is this host's own underlay address")
    leases = tuple(sorted(net.leases, key=lambda lease: _ipv4(lease.ip, f"{where}: lease")))
    for lease in leases:
        _check_lease(lease, network, gateway, where)
    _unique(f"{where}: lease address", [lease.ip for lease in leases])
    _unique(f"{where}: lease mac", [lease.mac for lease in leases])
    return WantedNetwork(net.vnet, net.vni, network, gateway, net.mtu, peers, leases)


def _check_host_address(address: IPv4Address, network: IPv4Network, what: str) -> None:
    if address not in network:
        raise NetworkError(f"{what} {address} is outside {network}")
    if address in (network.network_address, network.broadcast_address):
        raise NetworkError(f"{what} {address} is the network or broadcast address of {network}")


def _check_lease(lease: NicLease, network: IPv4Network, gateway: IPv4Address, where: str) -> None:
    address = _ipv4(lease.ip, f"{where}: lease of {lease.vm}")
    _check_host_address(address, network, f"{where}: lease of {lease.vm}")
    if address == gateway:
        raise NetworkError(f"{where}: lease of {lease.vm} is the gateway address {gateway}")
    if not _MAC.match(lease.mac):
        raise NetworkError(f"{where}: lease of {lease.vm}: {lease.mac!r} is not a lowercase MAC")
    if int(lease.mac[:2], 16) & 1:
        raise NetworkError(f"{where}: lease of {lease.vm}: {lease.mac} is a multicast MAC")
    if not _HOSTNAME.match(lease.vm):
        raise NetworkError(f"{where}: lease name {lease.vm!r} is not a valid host name")


def _endpoint(ep: HostEndpoint, networks: tuple[WantedNetwork, ...]) -> WantedEndpoint:
    where = f"endpoint {ep.protocol}/{ep.public_port} of {ep.vm}"
    for port in (ep.public_port, ep.vm_port):
        if not 1 <= port <= 65535:
            raise NetworkError(f"{where}: port {port} is outside 1..65535")
    vm_ip = _ipv4(ep.vm_ip, f"{where}: vm_ip")
    if not any(vm_ip in net.network for net in networks):
        raise NetworkError(f"{where}: {vm_ip} is in no network of this host")
    allow = tuple(
        sorted({_cidr(text, f"{where}: allow", strict=False) for text in ep.allow}, key=str)
    )
    return WantedEndpoint(ep.vm, vm_ip, ep.vm_port, ep.public_port, ep.protocol, allow)
