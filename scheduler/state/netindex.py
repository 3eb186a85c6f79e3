"""The indexes of virtual networks, kept from the VM records as they change. Pure.

- the addresses held in each network (``Ipam``) and how many VMs have a NIC in it;
- which hosts carry each network (a count of the VMs there with a NIC in it), so a host's
  peers are known without looking at every VM;
- the public ports held on each host (endpoints of the VMs placed there);
- which hosts' desired network configuration may have changed: ``dirty_hosts`` (their own
  VMs' NICs or endpoints changed, those VMs in ``touched``) and ``dirty_vnets`` (the set of
  hosts carrying a network changed, so every host carrying it has new peers).

A VM record adds a ``NetShare`` (what it holds); ``update`` takes the old share out and puts
the new one in, touching only what differs. The address belongs to the VM until it is deleted
(not to its placement); ports and membership belong to the placement.

A placement costs one count and one lease here; the sets of hosts per network and networks per
host change only when a host's count of a network goes 0 -> 1 or back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import msgspec

from common.ids import HostId, VmName
from common.messages import VmState
from common.network_messages import NicLease
from scheduler.state.ipam import Ipam, ip_int
from scheduler.state.model import VmRecord
from scheduler.state.storage import EndpointRecord, NicRecord

Port = tuple[str, int]
"""(protocol, public port) on a host."""


class NetShare(msgspec.Struct, frozen=True, gc=False):
    """What one VM record holds in the network indexes (a struct: two are built and compared
    per change of a VM, 0.2 us where a frozen dataclass took 2.4)."""

    nics: tuple[NicRecord, ...]
    host: HostId | None
    """The host it is placed on (holding capacity there), if any."""
    endpoints: tuple[EndpointRecord, ...]
    incoming: HostId | None = None
    """The destination of its live migration until the switchover: the VM's networks and
    leases are there too (its NICs attach there paused), its endpoints are not."""

    @property
    def carriers(self) -> tuple[HostId, ...]:
        """The hosts that carry the VM's networks."""
        host, incoming = self.host, self.incoming
        if incoming is None:
            return () if host is None else (host,)
        return (incoming,) if host is None else (host, incoming)


def share_of(record: VmRecord | None) -> NetShare | None:
    """None for a VM without NICs (most of the cost of a VM's change is skipped then)."""
    if record is None or not record.nics or record.state is VmState.DELETED:
        return None
    host = record.host if record.holds_capacity else None
    return NetShare(tuple(record.nics), host, tuple(record.endpoints), record.incoming_host)


def held_ports(share: NetShare | None) -> Iterator[Port]:
    if share is not None and share.host is not None:
        for endpoint in share.endpoints:
            if endpoint.public_port is not None:
                yield (endpoint.protocol.value, endpoint.public_port)


class NetIndex:
    def __init__(self) -> None:
        self.ipams: dict[str, Ipam] = {}
        self.users: Counter[str] = Counter()
        """VMs (not deleted) with a NIC in each network, addressed or not."""
        self.members: dict[str, Counter[HostId]] = {}
        """Per network, its hosts and how many of their VMs have a NIC in it."""
        self.host_vnets: dict[HostId, set[str]] = {}
        """Per host, the networks it carries (``members`` the other way round)."""
        self.ports: dict[HostId, dict[Port, VmName]] = {}
        self.leases: dict[HostId, dict[str, dict[VmName, NicLease]]] = {}
        """Per host and network, the DHCP leases of the VMs placed there (what a host's
        configuration lists, kept here so that computing it does not visit every VM)."""
        self.forwarding: dict[HostId, set[VmName]] = {}
        """Per host, the VMs placed there with endpoints."""
        self.dirty_hosts: set[HostId] = set()
        self.touched: dict[HostId, set[VmName]] = {}
        """Per dirty host, the VMs whose NICs, placement or endpoints changed there: what its
        next update looks at (not every VM placed there)."""
        self.dirty_vnets: set[str] = set()

    # ------------------------------------------------------------------ networks

    def add_vnet(self, name: str, cidr: str) -> None:
        self.ipams[name] = Ipam(cidr)

    def drop_vnet(self, name: str) -> None:
        self.ipams.pop(name, None)

    def hosts_of(self, vnet: str) -> Iterable[HostId]:
        return self.members.get(vnet, {}).keys()

    def vnets_of(self, host: HostId) -> Iterable[str]:
        return self.host_vnets.get(host, ())

    def port_owner(self, host: HostId, port: Port) -> VmName | None:
        return self.ports.get(host, {}).get(port)

    # ------------------------------------------------------------------ a VM record changed

    def update(self, name: VmName, old: NetShare | None, new: NetShare | None) -> None:
        if old == new:
            return
        old_nics = () if old is None else old.nics
        new_nics = () if new is None else new.nics
        nics_changed = old_nics != new_nics
        if nics_changed:
            self._addresses(old_nics, -1)
            self._addresses(new_nics, +1)
        old_hosts = () if old is None else old.carriers
        new_hosts = () if new is None else new.carriers
        if nics_changed or old_hosts != new_hosts:
            for host in old_hosts:
                for nic in old_nics:
                    self._leave(nic.vnet, host, name)
            for host in new_hosts:
                for nic in new_nics:
                    self._join(nic.vnet, host, name, nic)
        if (old is not None and old.endpoints) or (new is not None and new.endpoints):
            self._forwards(name, old, new)
        if not old_hosts and not new_hosts:
            return
        touched = self.touched
        for host in (*old_hosts, *new_hosts):
            self.dirty_hosts.add(host)
            names = touched.get(host)
            if names is None:
                touched[host] = {name}
            else:
                names.add(name)

    def _forwards(self, name: VmName, old: NetShare | None, new: NetShare | None) -> None:
        """The ports and forwarding VMs of a VM with endpoints, before and after."""
        if old is not None and old.host is not None and old.endpoints:
            forwarders = self.forwarding[old.host]
            forwarders.discard(name)
            if not forwarders:
                del self.forwarding[old.host]
            for port in held_ports(old):
                self._free_port(old.host, port, name)
        if new is not None and new.host is not None and new.endpoints:
            self.forwarding.setdefault(new.host, set()).add(name)
            for port in held_ports(new):
                self.ports.setdefault(new.host, {})[port] = name

    def _addresses(self, nics: tuple[NicRecord, ...], sign: int) -> None:
        users = self.users
        for nic in nics:
            count = users.get(nic.vnet, 0) + sign
            if count > 0:
                users[nic.vnet] = count
            else:
                users.pop(nic.vnet, None)
            ipam = self.ipams.get(nic.vnet)
            if nic.ip and ipam is not None:
                (ipam.take if sign > 0 else ipam.release)(ip_int(nic.ip))

    def _join(self, vnet: str, host: HostId, name: VmName, nic: NicRecord) -> None:
        hosts = self.members.get(vnet)
        if hosts is None:
            hosts = self.members[vnet] = Counter()
        count = hosts.get(host, 0)
        hosts[host] = count + 1
        if count == 0:  # the host carries the network now
            self.dirty_vnets.add(vnet)
            vnets = self.host_vnets.get(host)
            if vnets is None:
                self.host_vnets[host] = {vnet}
            else:
                vnets.add(vnet)
        if nic.ip:
            lease = NicLease(vm=name, mac=nic.mac, ip=nic.ip)
            by_vnet = self.leases.get(host)
            if by_vnet is None:
                self.leases[host] = {vnet: {name: lease}}
            elif (leased := by_vnet.get(vnet)) is None:
                by_vnet[vnet] = {name: lease}
            else:
                leased[name] = lease

    def _leave(self, vnet: str, host: HostId, name: VmName) -> None:
        by_vnet = self.leases.get(host, {})
        leased = by_vnet.get(vnet, {})
        leased.pop(name, None)
        if not leased:
            by_vnet.pop(vnet, None)
            if not by_vnet:
                self.leases.pop(host, None)
        hosts = self.members[vnet]
        count = hosts.get(host, 0) - 1
        if count > 0:
            hosts[host] = count
            return
        hosts.pop(host, None)  # the host carries the network no more
        self.dirty_vnets.add(vnet)
        if not hosts:
            del self.members[vnet]
        vnets = self.host_vnets[host]
        vnets.discard(vnet)
        if not vnets:
            del self.host_vnets[host]

    def _free_port(self, host: HostId, port: Port, name: VmName) -> None:
        ports = self.ports.get(host, {})
        if ports.get(port) == name:
            del ports[port]
            if not ports:
                del self.ports[host]

    # ------------------------------------------------------------------ for tests

    def same_as(self, other: NetIndex) -> list[str]:
        """Where this index differs from ``other`` (one built from scratch); [] if nowhere."""
        problems = []
        for name in sorted(set(self.ipams) | set(other.ipams)):
            mine, theirs = self.ipams.get(name), other.ipams.get(name)
            if mine is None or theirs is None or mine.held != theirs.held:
                problems.append(f"addresses of {name}")
            elif mine.doubly_held():
                problems.append(f"{name}: addresses held twice {mine.doubly_held()}")
        for label, a, b in (
            ("users", self.users, other.users),
            ("members", self.members, other.members),
            ("host networks", self.host_vnets, other.host_vnets),
            ("ports", self.ports, other.ports),
            ("leases", self.leases, other.leases),
            ("forwarding", self.forwarding, other.forwarding),
        ):
            if a != b:
                problems.append(f"{label}: {a} != {b}")
        return problems
