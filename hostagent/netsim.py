"""The simulated network backend (with the fake driver, and in simulated-host pools).

It keeps the accounts a Linux host would (per network a bridge holding the gateway, a VXLAN
device with its peers, the DHCP leases; the endpoints' port forwards) without touching the
kernel, and refuses what the Linux backend would refuse: a configuration it could not build
(a lease outside its network or on a reserved address, two leases for one address or MAC, two
networks with one VNI or overlapping ranges, two endpoints on one port, an endpoint to an
address no lease of this host has, a malformed address or range). A refused configuration
changes nothing (stricter than the contract, which allows a partial apply), and
``applied_digest`` stays what it was.

Like the Linux backend (hostagent/netplan.py), an apply works by difference: only what changed
since the configuration in place is checked (its new leases, peers and endpoints, a network whose
range changed in full), against accounts kept of what is in place (each network's addresses and
MACs). A host's configuration names every lease of its VMs, so re-checking all of it on each
apply made a burst of creates quadratic in the VMs per host. :meth:`SimulatedNetwork.problems`
checks a whole configuration; it stays the readable statement of what is refused (and words the
refusal), and a test checks that both agree.

An ``UpdateNetworks`` is applied in O(its size) against accounts kept by name
(hostagent/netsimheld.py): only what it adds is checked, and a refused one changes nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from common.errors import NetworkError
from common.network_messages import (
    ConfigureNetworks,
    HostEndpoint,
    HostNetwork,
    NicLease,
    UpdateNetworks,
)
from hostagent.netsimheld import (
    Held,
    Range,
    delta_size,
    endpoint_problems,
    lease_address,
    parse_ip,
)
from hostagent.network import IFNAME_MAX, NetworkBackend, bridge_name, vxlan_name

MAX_VNI = 2**24 - 1


@dataclass(frozen=True, slots=True)
class _InPlace:
    """A network in place, with the accounts that checking a change to it needs."""

    network: HostNetwork
    span: Range
    peers: frozenset[str]
    leases: frozenset[NicLease]
    by_address: dict[int, NicLease]
    macs: frozenset[str]


_NOTHING = HostNetwork(vnet="", vni=0, cidr="", gateway="")
"""Stands for the network in place when there is none: no peers, no leases."""


class SimulatedNetwork:
    name: str = "simulated"

    def __init__(self) -> None:
        self._digest = ""
        self._networks: dict[int, HostNetwork] = {}
        """The networks of the last whole configuration applied, by VNI."""
        self._vnis: set[int] = set()
        self._held: Held | None = None
        """What is in place by name, once an update came after the last whole configuration."""
        self.endpoints: dict[tuple[str, int], HostEndpoint] = {}
        """The port forwards in place, by (protocol, public port)."""
        self.applied = 0
        """Configurations applied in full (for tests and pools' accounts)."""
        self.checked = 0
        """Networks, leases, peers and endpoints checked one by one so far: the work of the
        applies, for tests (a lease in place is not checked again)."""
        self._ranges: dict[str, Range] = {}
        self._in_place: dict[int, _InPlace] = {}

    @property
    def applied_digest(self) -> str:
        return self._digest

    async def apply(self, config: ConfigureNetworks) -> None:
        planned = self._plan(config)
        if planned is None:
            problems = self.problems(config) or ["refused"]  # "refused": cannot happen
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise NetworkError("; ".join(problems[:3]) + more)
        self._in_place = planned
        self._networks = {network.vni: network for network in config.networks}
        self._vnis = set(self._networks)
        self.endpoints = {(e.protocol.value, e.public_port): e for e in config.endpoints}
        self._digest = config.digest
        self._held = None  # made from ``_networks`` by the next update
        self.applied += 1

    async def update(self, delta: UpdateNetworks) -> None:
        """Apply the changes of ``delta`` in O(their size), checked as a whole configuration
        would be (a refused update changes nothing)."""
        if delta.base != self._digest:
            raise NetworkError(f"update based on {delta.base!r}, not {self._digest!r}")
        held = self._held or Held.of(self._networks.values(), self.endpoints.values(), self)
        problem = held.update(delta, self)
        if problem is not None:
            raise NetworkError(f"update not applied: {problem}")
        self._held, self._in_place = held, {}  # a whole configuration is checked in full
        self._vnis = {net.vni for net in held.nets.values()}
        for ref in delta.endpoints_removed:
            del self.endpoints[(ref.protocol.value, ref.public_port)]
        for endpoint in delta.endpoints_added:
            self.endpoints[(endpoint.protocol.value, endpoint.public_port)] = endpoint
        self.checked += delta_size(delta)
        self._digest = delta.digest
        self.applied += 1

    @property
    def networks(self) -> dict[int, HostNetwork]:
        """The networks in place, by VNI (each a bridge and a VXLAN device on a real host)."""
        if self._held is None:
            return self._networks
        return {network.vni: network for network in self._held.config.whole().networks}

    def has_network(self, vni: int) -> bool:
        return vni in self._vnis

    async def close(self) -> None:
        """Nothing is held outside this object."""

    # ------------------------------------------------------------------ accounts

    def bridges(self) -> list[str]:
        return sorted(bridge_name(vni) for vni in self._vnis)

    def vxlans(self) -> list[str]:
        return sorted(vxlan_name(vni) for vni in self._vnis)

    def leased(self) -> dict[str, str]:
        """Every lease in place: VM name -> address."""
        return {lease.vm: lease.ip for n in self.networks.values() for lease in n.leases}

    # ------------------------------------------------------------------ checked by difference

    def _plan(self, config: ConfigureNetworks) -> dict[int, _InPlace] | None:
        """The networks of ``config`` with their accounts, checked against those in place;
        None if Linux would refuse it (``problems`` then says why)."""
        planned: dict[int, _InPlace] = {}
        for network in config.networks:
            placed = self._plan_network(network, self._in_place.get(network.vni))
            if placed is None or network.vni in planned:
                return None
            if any(placed.span.overlaps(other.span) for other in planned.values()):
                return None
            planned[network.vni] = placed
        return planned if self._endpoints_fit(config.endpoints, planned) else None

    def _plan_network(self, network: HostNetwork, before: _InPlace | None) -> _InPlace | None:
        span = self._range(network.cidr)
        if span is None:
            return None
        head = (network.cidr, network.gateway, network.mtu)
        if before is None or head != (
            before.network.cidr,
            before.network.gateway,
            before.network.mtu,
        ):
            self.checked += 1
            if not _head_fits(network, span):
                return None
        if before is None or before.span != span:  # checked as new, lease by lease
            before = _InPlace(_NOTHING, span, frozenset(), frozenset(), {}, frozenset())
        if network.peers == before.network.peers:  # the usual case: compared in C
            peers = before.peers
        else:
            peers = frozenset(network.peers)
            if len(peers) != len(network.peers):
                return None
            added_peers = peers - before.peers
            self.checked += len(added_peers)
            if any(parse_ip(peer) is None for peer in added_peers):
                return None
        return self._plan_leases(network, span, peers, before)

    def _plan_leases(
        self, network: HostNetwork, span: Range, peers: frozenset[str], before: _InPlace
    ) -> _InPlace | None:
        leases = frozenset(network.leases)
        if len(leases) != len(network.leases):
            return None  # a lease named twice
        if leases == before.leases:
            return _InPlace(network, span, peers, leases, before.by_address, before.macs)
        by_address, macs = dict(before.by_address), set(before.macs)
        for lease in before.leases - leases:
            del by_address[lease_address(lease)]
            macs.discard(lease.mac)
        added = leases - before.leases
        self.checked += len(added)
        for lease in added:
            address = parse_ip(lease.ip)
            if address is None or not span.gateway < address < span.broadcast:
                return None
            if address in by_address or lease.mac in macs:
                return None
            by_address[address] = lease
            macs.add(lease.mac)
        return _InPlace(network, span, peers, leases, by_address, frozenset(macs))

    def _endpoints_fit(self, endpoints: list[HostEndpoint], planned: dict[int, _InPlace]) -> bool:
        """Each endpoint on a port of its own, to an address leased here; one not in place
        already is checked in full."""
        ports: set[tuple[str, int]] = set()
        for endpoint in endpoints:
            key = (endpoint.protocol.value, endpoint.public_port)
            if key in ports:
                return False
            ports.add(key)
            if self.endpoints.get(key) != endpoint:
                self.checked += 1
                if endpoint_problems(endpoint, set(), {endpoint.vm_ip}):
                    return False
            address = parse_ip(endpoint.vm_ip)
            if address is None or not any(address in p.by_address for p in planned.values()):
                return False
        return True

    # ------------------------------------------------------------------ what Linux would refuse

    def problems(self, config: ConfigureNetworks) -> list[str]:
        found: list[str] = []
        ranges: list[tuple[str, ipaddress.IPv4Network]] = []
        vnis: set[int] = set()
        addresses: set[str] = set()
        for network in config.networks:
            found += self._network_problems(network, ranges, vnis)
            addresses.update(lease.ip for lease in network.leases)
        ports: set[tuple[str, int]] = set()
        for endpoint in config.endpoints:
            found += endpoint_problems(endpoint, ports, addresses)
        return found

    def _range(self, cidr: str) -> Range | None:
        known = self._ranges.get(cidr)
        if known is None:
            try:
                net = ipaddress.IPv4Network(cidr)
            except ValueError:
                return None
            network, broadcast = int(net.network_address), int(net.broadcast_address)
            known = self._ranges[cidr] = Range(network, broadcast, network + 1)
        return known

    def _network_problems(
        self,
        network: HostNetwork,
        ranges: list[tuple[str, ipaddress.IPv4Network]],
        vnis: set[int],
    ) -> list[str]:
        name = network.vnet
        if not 1 <= network.vni <= MAX_VNI:
            return [f"network {name}: VNI {network.vni} is not a VXLAN network id"]
        if network.vni in vnis:
            return [f"network {name}: VNI {network.vni} is used twice"]
        vnis.add(network.vni)
        if len(bridge_name(network.vni)) > IFNAME_MAX:
            return [f"network {name}: interface name too long"]
        span = self._range(network.cidr)
        if span is None or span.broadcast - span.network < 3:
            return [f"network {name}: {network.cidr!r} is not an IPv4 network with room"]
        net = ipaddress.IPv4Network(network.cidr)
        clash = next((other for other, r in ranges if r.overlaps(net)), None)
        if clash is not None:
            return [f"network {name}: {network.cidr} overlaps network {clash}"]
        ranges.append((name, net))
        found: list[str] = []
        if parse_ip(network.gateway) != span.gateway:
            found.append(f"network {name}: gateway {network.gateway} is not its first address")
        if not 576 <= network.mtu <= 9000:
            found.append(f"network {name}: MTU {network.mtu} out of 576..9000")
        if len(set(network.peers)) != len(network.peers) or None in map(parse_ip, network.peers):
            found.append(f"network {name}: peers are not distinct IPv4 addresses")
        return found + _lease_problems(network, span)


def _head_fits(network: HostNetwork, span: Range) -> bool:
    """What ``_network_problems`` checks of a network besides its peers, leases and the other
    networks."""
    return (
        1 <= network.vni <= MAX_VNI
        and len(bridge_name(network.vni)) <= IFNAME_MAX
        and span.broadcast - span.network >= 3
        and parse_ip(network.gateway) == span.gateway
        and 576 <= network.mtu <= 9000
    )


def _lease_problems(network: HostNetwork, span: Range) -> list[str]:
    found: list[str] = []
    ips: set[int] = set()
    macs: set[str] = set()
    for lease in network.leases:
        address = parse_ip(lease.ip)
        where = f"lease of {lease.vm} in {network.vnet}"
        if address is None or not span.gateway < address < span.broadcast:
            found.append(f"{where}: {lease.ip} is not a VM address of {network.cidr}")
        elif address in ips or lease.mac in macs:
            found.append(f"{where}: address {lease.ip} or MAC {lease.mac} leased twice")
        if address is not None:
            ips.add(address)
        macs.add(lease.mac)
    return found


_: NetworkBackend = SimulatedNetwork()
