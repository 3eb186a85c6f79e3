"""The simulated network backend's accounts shared by its two ways in: checking a whole
configuration (hostagent/netsim.py) and an update, in O(the update's size) (:class:`Held`).
Pure."""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from common.netconfig import NetConfig
from common.network_messages import (
    HostEndpoint,
    HostNetwork,
    NetworkChange,
    NicLease,
    UpdateNetworks,
)
from common.sumdigest import digest_text


class WholeChecks(Protocol):
    """What the simulated backend checks of a whole network (hostagent/netsim.py)."""

    def _range(self, cidr: str) -> Range | None: ...

    def _network_problems(
        self,
        network: HostNetwork,
        ranges: list[tuple[str, ipaddress.IPv4Network]],
        vnis: set[int],
    ) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Range:
    network: int
    broadcast: int
    gateway: int

    def overlaps(self, other: Range) -> bool:
        return self.network <= other.broadcast and other.network <= self.broadcast


@functools.lru_cache(maxsize=1 << 17)
def parse_ip(text: str) -> int | None:
    """A dotted IPv4 address as an int; None if it is not one (ASCII digits, no leading zeros:
    one text per address). Cached: the same peers and leases recur in a host's configurations."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if (
            not (part.isascii() and part.isdigit())
            or len(part) > 3
            or (len(part) > 1 and part[0] == "0")
        ):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


def lease_address(lease: NicLease) -> int:
    """The address of a lease in place (checked when it was placed)."""
    address = parse_ip(lease.ip)
    assert address is not None
    return address


def endpoint_problems(
    endpoint: HostEndpoint, ports: set[tuple[str, int]], addresses: set[str]
) -> list[str]:
    key = (endpoint.protocol.value, endpoint.public_port)
    where = f"endpoint {endpoint.public_port}/{endpoint.protocol}"
    found: list[str] = []
    if key in ports:
        found.append(f"{where}: the port is forwarded twice")
    ports.add(key)
    if not (1 <= endpoint.public_port <= 65535 and 1 <= endpoint.vm_port <= 65535):
        found.append(f"{where}: a port out of 1..65535")
    if endpoint.vm_ip not in addresses:
        found.append(f"{where}: {endpoint.vm_ip} is no VM leased on this host")
    for text in endpoint.allow:
        try:
            ipaddress.IPv4Network(text)
        except ValueError:
            found.append(f"{where}: allow range {text!r} is not an IPv4 network")
    return found


def delta_size(delta: UpdateNetworks) -> int:
    items = len(delta.added) + len(delta.removed)
    items += len(delta.endpoints_added) + len(delta.endpoints_removed)
    for change in delta.changed:
        items += len(change.peers_added) + len(change.peers_removed)
        items += len(change.leases_added) + len(change.leases_removed)
    return items


@dataclass(slots=True)
class _Net:
    """A network in place: its addresses (to the VM leasing each) and MACs."""

    vni: int
    span: Range
    by_address: dict[int, str]
    macs: set[str]

    def put(self, address: int, lease: NicLease) -> None:
        self.by_address[address] = lease.vm
        self.macs.add(lease.mac)

    def drop(self, address: int, lease: NicLease) -> None:
        del self.by_address[address]
        self.macs.discard(lease.mac)


class Held:
    """What is in place by name (``config``), each network's addresses and MACs, and how many
    endpoints go to each address: what an update is checked against, in O(its size). A check
    changes the accounts as it goes and undoes them if the update is refused."""

    def __init__(self) -> None:
        self.config = NetConfig()
        self.nets: dict[str, _Net] = {}
        self.targets: Counter[int] = Counter()

    @classmethod
    def of(
        cls,
        networks: Iterable[HostNetwork],
        endpoints: Iterable[HostEndpoint],
        backend: WholeChecks,
    ) -> Held:
        held = cls()
        for network in networks:
            span = backend._range(network.cidr)
            assert span is not None  # it was checked when applied
            held.config.add_network(network)
            net = held.nets[network.vnet] = _Net(network.vni, span, {}, set())
            for lease in network.leases:
                net.put(lease_address(lease), lease)
        for endpoint in endpoints:
            held.config.add_endpoint(endpoint)
            held.targets[parse_ip(endpoint.vm_ip) or 0] += 1
        return held

    def update(self, delta: UpdateNetworks, backend: WholeChecks) -> str | None:
        """Apply ``delta``; why not if it cannot (then nothing changed)."""
        problem = self.config.problem(delta)
        if problem is None and digest_text(self.config.total + self.config.shift(delta)) != (
            delta.digest
        ):
            problem = f"its result's digest is not {delta.digest}"
        if problem is not None:
            return problem
        undo: list[Callable[[], object]] = []
        freed = self._remove(delta, undo)
        problem = self._add(delta, backend, undo) or self._dangling(freed)
        if problem is not None:
            for step in reversed(undo):
                step()
            return problem
        self.config.apply(delta)
        return None

    def _remove(self, delta: UpdateNetworks, undo: list[Callable[[], object]]) -> set[int]:
        """The removals of ``delta``; the addresses they free."""
        freed: set[int] = set()
        for vnet in delta.removed:
            net = self.nets.pop(vnet)
            undo.append(functools.partial(self.nets.__setitem__, vnet, net))
            freed.update(net.by_address)
        for change in delta.changed:
            net, leased = self.nets[change.vnet], self.config.leases[change.vnet]
            for vm in change.leases_removed:
                address = lease_address(leased[vm])
                net.drop(address, leased[vm])
                undo.append(functools.partial(net.put, address, leased[vm]))
                freed.add(address)
        for ref in delta.endpoints_removed:
            target = parse_ip(self.config.endpoints[(ref.protocol.value, ref.public_port)].vm_ip)
            self.targets[target or 0] -= 1
            undo.append(functools.partial(self.targets.update, [target or 0]))
        return freed

    def _add(
        self, delta: UpdateNetworks, backend: WholeChecks, undo: list[Callable[[], object]]
    ) -> str | None:
        if delta.added:
            ranges = [(v, ipaddress.IPv4Network(self.config.heads[v].cidr)) for v in self.nets]
            vnis = {net.vni for net in self.nets.values()}
        for network in delta.added:
            found = backend._network_problems(network, ranges, vnis)
            span = backend._range(network.cidr)
            if found or span is None:
                return found[0] if found else "refused"
            net = self.nets[network.vnet] = _Net(network.vni, span, {}, set())
            undo.append(functools.partial(self.nets.pop, network.vnet))
            for lease in network.leases:
                net.put(lease_address(lease), lease)
        for change in delta.changed:
            problem = self._change_fits(change, undo)
            if problem is not None:
                return problem
        for endpoint in delta.endpoints_added:
            found = endpoint_problems(endpoint, set(), {endpoint.vm_ip})
            target = parse_ip(endpoint.vm_ip)
            if target is None or not any(target in n.by_address for n in self.nets.values()):
                return f"endpoint {endpoint.public_port}: no VM leased at {endpoint.vm_ip}"
            if found:
                return found[0]
            self.targets[target] += 1
            undo.append(functools.partial(self.targets.subtract, [target]))
        return None

    def _change_fits(self, change: NetworkChange, undo: list[Callable[[], object]]) -> str | None:
        net = self.nets[change.vnet]
        if None in map(parse_ip, change.peers_added):
            return f"network {change.vnet}: a peer is not an IPv4 address"
        for lease in change.leases_added:
            address = parse_ip(lease.ip)
            where = f"lease of {lease.vm} in {change.vnet}"
            if address is None or not net.span.gateway < address < net.span.broadcast:
                return f"{where}: {lease.ip} is not a VM address of its network"
            if address in net.by_address or lease.mac in net.macs:
                return f"{where}: address {lease.ip} or MAC {lease.mac} leased twice"
            net.put(address, lease)
            undo.append(functools.partial(net.drop, address, lease))
        return None

    def _dangling(self, freed: set[int]) -> str | None:
        for address in freed:
            if self.targets[address] > 0 and not any(
                address in n.by_address for n in self.nets.values()
            ):
                return "an endpoint goes to an address no longer leased"
        return None
