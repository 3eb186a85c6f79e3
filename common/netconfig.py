"""A host's network configuration as a set of items, with its digest kept as items come and go.
Pure; used by the scheduler (what it wants a host to hold) and the agents (what they hold).

The digest of a configuration is the sum, modulo 2**64, of a hash of each of its items: each
network's head (name, VNI, range, gateway, MTU), each peer and each lease of a network, each
endpoint. A sum does not depend on order, and an item added or removed moves it by that item's
hash alone, so an ``UpdateNetworks`` costs what it changes on both sides, and its result's
digest can be checked against the one the scheduler computed. The empty configuration's digest
is "" (what an agent that holds nothing reports).

:class:`NetConfig` holds a configuration by name (networks by name, leases by VM, endpoints by
host port) so that an update applies in O(its size). :meth:`NetConfig.problem` says whether an
update can apply (it removes only what is there, adds only what is not); :meth:`apply` assumes it
can. The scheduler keeps no peers in its copies (``keep_peers=False``): a network's peers are
the same for every host carrying it, and are kept once per network (scheduler/core/hostnets.py).
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec

from common.network_messages import (
    ConfigureNetworks,
    HostEndpoint,
    HostNetwork,
    NetworkChange,
    NicLease,
    UpdateNetworks,
)
from common.sumdigest import digest_text, hash64

EndpointKey = tuple[str, int]
"""(protocol, public port)."""


def _hash(text: str) -> int:
    return hash64(text.encode())


def head_hash(network: HostNetwork) -> int:
    return _hash(
        f"n\x1f{network.vnet}\x1f{network.vni}\x1f{network.cidr}\x1f{network.gateway}"
        f"\x1f{network.mtu}"
    )


_PEER_TABLES_MAX = 64
_PEER_TABLE_MAX = 1 << 16
_peer_tables: dict[str, dict[str, int]] = {}
"""Per network, the hash of each peer address seen (bounded: cleared when full)."""


def peers_hash(vnet: str, addresses: Collection[str]) -> int:
    """The sum of the hashes of ``addresses`` as peers of ``vnet``: a table lookup each, in
    C (a network's peers recur in every host's configuration and in each update of every host
    carrying it: O(hosts^2) items while a fleet fills)."""
    table = _peer_tables.get(vnet)
    if table is None:
        if len(_peer_tables) >= _PEER_TABLES_MAX:
            _peer_tables.clear()
        table = _peer_tables[vnet] = {}
    try:
        return sum(map(table.__getitem__, addresses))
    except KeyError:
        if len(table) >= _PEER_TABLE_MAX:
            table.clear()
        for address in addresses:
            if address not in table:
                table[address] = _hash(f"p\x1f{vnet}\x1f{address}")
        return sum(map(table.__getitem__, addresses))


def peer_hash(vnet: str, address: str) -> int:
    known = _peer_tables.get(vnet, {}).get(address)
    return known if known is not None else peers_hash(vnet, (address,))


def lease_hash(vnet: str, lease: NicLease) -> int:
    return _hash(f"l\x1f{vnet}\x1f{lease.vm}\x1f{lease.mac}\x1f{lease.ip}")


def endpoint_hash(endpoint: HostEndpoint) -> int:
    allow = ",".join(endpoint.allow)
    return _hash(
        f"e\x1f{endpoint.vm}\x1f{endpoint.vm_ip}\x1f{endpoint.vm_port}\x1f"
        f"{endpoint.public_port}\x1f{endpoint.protocol.value}\x1f{allow}"
    )


def endpoint_key(endpoint: HostEndpoint) -> EndpointKey:
    return (endpoint.protocol.value, endpoint.public_port)


def bare(network: HostNetwork) -> HostNetwork:
    """The head of ``network``: without its peers and leases (every other field kept)."""
    return msgspec.structs.replace(network, peers=[], leases=[])


class NetConfig:
    __slots__ = ("by_vm", "endpoints", "heads", "keep_peers", "leases", "peers", "total")

    def __init__(self, *, keep_peers: bool = True) -> None:
        self.keep_peers = keep_peers
        self.heads: dict[str, HostNetwork] = {}
        """The networks, by name (peers and leases left out: they are below)."""
        self.peers: dict[str, set[str]] = {}
        self.leases: dict[str, dict[str, NicLease]] = {}
        """Per network, the leases by VM name."""
        self.endpoints: dict[EndpointKey, HostEndpoint] = {}
        self.by_vm: dict[str, set[EndpointKey]] = {}
        """The endpoints of each VM."""
        self.total = 0
        """The sum of the item hashes (of the peers too only with ``keep_peers``)."""

    @property
    def digest(self) -> str:
        return digest_text(self.total)

    @classmethod
    def of(cls, config: ConfigureNetworks, *, keep_peers: bool = True) -> NetConfig:
        made = cls(keep_peers=keep_peers)
        for network in config.networks:
            made.add_network(network)
        for endpoint in config.endpoints:
            made.add_endpoint(endpoint)
        return made

    def whole(self, digest: str | None = None) -> ConfigureNetworks:
        """The configuration in full (sorted as the scheduler sends it)."""
        networks = [
            HostNetwork(
                vnet=vnet,
                vni=head.vni,
                cidr=head.cidr,
                gateway=head.gateway,
                mtu=head.mtu,
                peers=sorted(self.peers.get(vnet, ())),
                leases=_sorted_leases(self.leases[vnet]),
            )
            for vnet, head in sorted(self.heads.items())
        ]
        endpoints = sorted(self.endpoints.values(), key=lambda e: (e.public_port, e.protocol, e.vm))
        return ConfigureNetworks(
            networks=networks,
            endpoints=endpoints,
            digest=self.digest if digest is None else digest,
        )

    # ------------------------------------------------------------------ items

    def add_network(self, network: HostNetwork) -> None:
        vnet = network.vnet
        self.heads[vnet] = bare(network)
        self.total += head_hash(network)
        self.leases[vnet] = {}
        if self.keep_peers:
            self.peers[vnet] = set()
            self.add_peers(vnet, network.peers)
        for lease in network.leases:
            self.add_lease(vnet, lease)

    def remove_network(self, vnet: str) -> None:
        self.total -= head_hash(self.heads.pop(vnet))
        self.remove_peers(vnet, list(self.peers.pop(vnet, ())))
        for lease in self.leases.pop(vnet).values():
            self.total -= lease_hash(vnet, lease)

    def add_peers(self, vnet: str, addresses: list[str]) -> None:
        if self.keep_peers:
            self.peers[vnet].update(addresses)
            self.total += peers_hash(vnet, addresses)

    def remove_peers(self, vnet: str, addresses: list[str]) -> None:
        if self.keep_peers:
            self.peers.get(vnet, set()).difference_update(addresses)
            self.total -= peers_hash(vnet, addresses)

    def add_lease(self, vnet: str, lease: NicLease) -> None:
        self.leases[vnet][lease.vm] = lease
        self.total += lease_hash(vnet, lease)

    def remove_lease(self, vnet: str, vm: str) -> None:
        self.total -= lease_hash(vnet, self.leases[vnet].pop(vm))

    def add_endpoint(self, endpoint: HostEndpoint) -> None:
        key = endpoint_key(endpoint)
        self.endpoints[key] = endpoint
        self.by_vm.setdefault(endpoint.vm, set()).add(key)
        self.total += endpoint_hash(endpoint)

    def remove_endpoint(self, key: EndpointKey) -> None:
        endpoint = self.endpoints.pop(key)
        keys = self.by_vm[endpoint.vm]
        keys.discard(key)
        if not keys:
            del self.by_vm[endpoint.vm]
        self.total -= endpoint_hash(endpoint)

    # ------------------------------------------------------------------ updates

    def problem(self, update: UpdateNetworks) -> str | None:
        """Why ``update`` cannot apply to this configuration (None: it can): it is based on
        another one, or removes what is not there, or adds what is."""
        if update.base != self.digest:
            return f"based on {update.base or 'nothing'}, not {self.digest or 'nothing'}"
        removed = set(update.removed)
        if len(removed) != len(update.removed) or not removed <= self.heads.keys():
            return "removes a network not in place"
        kept = self.heads.keys() - removed
        added = {n.vnet for n in update.added}
        if len(added) != len(update.added) or added & kept:
            return "adds a network in place"
        for change in update.changed:
            found = self._change_problem(change, kept)
            if found is not None:
                return f"network {change.vnet}: {found}"
        gone = {(ref.protocol.value, ref.public_port) for ref in update.endpoints_removed}
        if len(gone) != len(update.endpoints_removed) or not gone <= self.endpoints.keys():
            return "removes an endpoint not in place"
        new = [endpoint_key(e) for e in update.endpoints_added]
        if len(set(new)) != len(new) or any(k in self.endpoints and k not in gone for k in new):
            return "adds an endpoint on a port in use"
        return None

    def _change_problem(self, change: NetworkChange, kept: set[str]) -> str | None:
        vnet = change.vnet
        if vnet not in kept:
            return "not in place"
        leased = self.leases[vnet]
        removed = set(change.leases_removed)
        if len(removed) != len(change.leases_removed) or not removed <= leased.keys():
            return "removes a lease not in place"
        new = [lease.vm for lease in change.leases_added]
        if len(set(new)) != len(new) or any(vm in leased and vm not in removed for vm in new):
            return "adds a lease in place"
        if not self.keep_peers:
            return None
        peers = self.peers[vnet]
        gone = set(change.peers_removed)
        if len(gone) != len(change.peers_removed) or not gone <= peers:
            return "removes a peer not in place"
        come = set(change.peers_added)
        if len(come) != len(change.peers_added) or not (come & peers) <= gone:
            return "adds a peer in place"
        return None

    def shift(self, update: UpdateNetworks) -> int:
        """How much ``update`` (``problem`` said it can apply) moves the sum of item hashes."""
        moved = 0
        for vnet in update.removed:
            moved -= head_hash(self.heads[vnet])
            moved -= peers_hash(vnet, self.peers.get(vnet, ()))
            moved -= sum(lease_hash(vnet, lease) for lease in self.leases[vnet].values())
        for ref in update.endpoints_removed:
            moved -= endpoint_hash(self.endpoints[(ref.protocol.value, ref.public_port)])
        for change in update.changed:
            vnet, leased = change.vnet, self.leases[change.vnet]
            moved -= sum(lease_hash(vnet, leased[vm]) for vm in change.leases_removed)
            moved += sum(lease_hash(vnet, lease) for lease in change.leases_added)
            if self.keep_peers:
                moved -= peers_hash(vnet, change.peers_removed)
                moved += peers_hash(vnet, change.peers_added)
        for network in update.added:
            moved += head_hash(network)
            moved += sum(lease_hash(network.vnet, lease) for lease in network.leases)
            if self.keep_peers:
                moved += peers_hash(network.vnet, network.peers)
        return moved + sum(endpoint_hash(e) for e in update.endpoints_added)

    def apply(self, update: UpdateNetworks) -> None:
        """Apply ``update`` (``problem`` said it can); O(its size)."""
        for vnet in update.removed:
            self.remove_network(vnet)
        for ref in update.endpoints_removed:
            self.remove_endpoint((ref.protocol.value, ref.public_port))
        for change in update.changed:
            self.remove_peers(change.vnet, change.peers_removed)
            for vm in change.leases_removed:
                self.remove_lease(change.vnet, vm)
            self.add_peers(change.vnet, change.peers_added)
            for lease in change.leases_added:
                self.add_lease(change.vnet, lease)
        for network in update.added:
            self.add_network(network)
        for endpoint in update.endpoints_added:
            self.add_endpoint(endpoint)


def _sorted_leases(leased: dict[str, NicLease]) -> list[NicLease]:
    return [leased[vm] for vm in sorted(leased)]


def digest_of(config: ConfigureNetworks) -> str:
    """The digest of ``config`` (its own ``digest`` field is not read)."""
    return NetConfig.of(config).digest
