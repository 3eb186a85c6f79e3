"""Wire schemas of virtual networks: the API (vnets, NICs, endpoints) and what an agent needs to
build a host's share of them (bridges, VXLAN peers, DHCP leases, port forwards).

API subjects: stratus.api.vnet.create|get|list|delete (VnetReply, VnetListReply) and
stratus.api.vm.endpoint.add|remove (VmReply). A VM's NICs are asked for at create time
(``CreateVm.nics``) and reported in ``VmInfo.nics`` and ``VmEvent.nics``.

Agents: the scheduler sends each host ``ConfigureNetworks`` (the whole desired network state of
that host, level-triggered) or, once the host holds one, ``UpdateNetworks`` (what changed since
the configuration named by ``base``); the agent applies it and reports the ``digest`` it holds
in every heartbeat (``Heartbeat.network_digest``). An agent not holding ``base`` ignores the
update; while the reported digest differs from the one the scheduler wants, the scheduler sends
the whole configuration again. The digest is an order-independent sum of per-item hashes
(common/netconfig.py), so both sides keep it as items come and go.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from common.fields import DigestField, ErrorBody, RequestId, ShortText, VmNameField
from common.ids import VM_NAME_PATTERN, whole
from common.paging import NextMarker, PageQuery

VnetNameField = Annotated[str, msgspec.Meta(pattern=VM_NAME_PATTERN, description="[a-z0-9-]{1,63}")]
Ipv4Field = Annotated[str, msgspec.Meta(min_length=7, max_length=15, description="dotted IPv4")]
CidrField = Annotated[str, msgspec.Meta(min_length=9, max_length=18, description="a.b.c.d/n")]
PortField = Annotated[int, msgspec.Meta(ge=1, le=65535)]
MacField = Annotated[str, msgspec.Meta(pattern=whole(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}"))]
MAX_NICS = 4
MAX_ENDPOINTS = 16
MAX_ALLOW = 16


class EndpointProtocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


# --------------------------------------------------------------------------- API requests


class NicRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One NIC of a new VM: its network, and optionally the address it must have."""

    vnet: VnetNameField
    ip: Ipv4Field | None = None
    """A fixed address inside the network's range; None: the scheduler picks a free one."""


class CreateVnet(msgspec.Struct, kw_only=True):
    name: VnetNameField
    cidr: CidrField
    """An IPv4 range (``10.1.0.0/24``); its first usable address is the gateway on every host."""
    region: ShortText | None = None
    request_id: RequestId | None = None


class VnetRef(msgspec.Struct, kw_only=True):
    """Body of vnet.get and vnet.delete (delete is refused while a VM has a NIC in it)."""

    name: VnetNameField
    request_id: RequestId | None = None


class ListVnets(PageQuery, kw_only=True):
    region: ShortText | None = None


class AddEndpoint(msgspec.Struct, kw_only=True):
    """Forward a port of the host running ``vm`` to a port of the VM's first NIC."""

    vm: VmNameField
    vm_port: PortField
    public_port: PortField | None = None
    """The host port asked for; None: the scheduler picks one free on the VM's host."""
    protocol: EndpointProtocol = EndpointProtocol.TCP
    allow: Annotated[list[CidrField], msgspec.Meta(max_length=MAX_ALLOW)] = []
    """Source ranges allowed to connect; empty: anyone who can reach the host."""
    request_id: RequestId | None = None


class RemoveEndpoint(msgspec.Struct, kw_only=True):
    vm: VmNameField
    vm_port: PortField
    protocol: EndpointProtocol = EndpointProtocol.TCP
    request_id: RequestId | None = None


# --------------------------------------------------------------------------- API replies


class NicInfo(msgspec.Struct, frozen=True, kw_only=True):
    vnet: str
    ip: str
    mac: str
    prefix_len: int
    gateway: str


class EndpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    vm_port: int
    protocol: EndpointProtocol
    public_port: int | None
    """The host port now forwarded (None while the VM has no host)."""
    address: str | None
    """The underlay address of the host where the endpoint answers (None while unplaced)."""
    allow: list[str] = []


class VnetInfo(msgspec.Struct, kw_only=True):
    name: str
    cidr: str
    region: str | None
    vni: int
    """The VXLAN network identifier of this network on the wire between hosts."""
    gateway: str
    addresses_total: int
    """Addresses VMs can have (the range less network, gateway and broadcast addresses)."""
    addresses_used: int
    vms: int
    created_at: datetime


class VnetReply(msgspec.Struct, omit_defaults=True):
    vnet: VnetInfo | None = None
    error: ErrorBody | None = None


class VnetListReply(msgspec.Struct, omit_defaults=True):
    vnets: list[VnetInfo] = []
    next: NextMarker | None = None
    error: ErrorBody | None = None


# --------------------------------------------------------------------------- agent protocol


class NicSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A NIC as the agent needs it to start the VM: a tap on the network's bridge."""

    index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_NICS)]
    vnet: str
    vni: int
    mac: MacField
    ip: str
    prefix_len: int
    gateway: str


class NicLease(msgspec.Struct, frozen=True, kw_only=True):
    vm: str
    mac: str
    ip: str


class HostNetwork(msgspec.Struct, frozen=True, kw_only=True):
    """One network present on a host: its bridge (holding the gateway address), its VXLAN
    device, the other hosts that carry it, and the DHCP leases of this host's VMs in it."""

    vnet: str
    vni: int
    cidr: str
    gateway: str
    mtu: int = 1450
    """The guests' MTU: the underlay's 1500 less VXLAN's 50 bytes."""
    peers: list[str] = []
    """Underlay addresses of the other hosts carrying this network (VXLAN head-end
    replication), sorted."""
    leases: list[NicLease] = []


class HostEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """host ``public_port`` -> ``vm_ip``:``vm_port`` (DNAT), only from ``allow`` if given."""

    vm: str
    vm_ip: str
    vm_port: int
    public_port: int
    protocol: EndpointProtocol = EndpointProtocol.TCP
    allow: list[str] = []


class ConfigureNetworks(msgspec.Struct, tag="configure_networks", kw_only=True):
    """The whole desired network state of one host. Applying it creates what is missing and
    removes what it no longer names; applying it twice changes nothing."""

    networks: list[HostNetwork] = []
    endpoints: list[HostEndpoint] = []
    digest: DigestField
    """Names this configuration; the agent echoes it in ``Heartbeat.network_digest``."""


class NetworkChange(msgspec.Struct, frozen=True, kw_only=True):
    """What changed in one network the host keeps: removals are applied before additions."""

    vnet: str
    peers_added: list[str] = []
    peers_removed: list[str] = []
    leases_added: list[NicLease] = []
    leases_removed: list[str] = []
    """The VMs whose leases in this network go."""


class EndpointRef(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint in place, by the host port it holds."""

    public_port: int
    protocol: EndpointProtocol = EndpointProtocol.TCP


class UpdateNetworks(msgspec.Struct, tag="update_networks", kw_only=True):
    """What changed in a host's desired network state since the configuration ``base``: applied
    only by a host holding ``base`` (others ignore it and keep reporting their digest, and the
    scheduler sends the whole ``ConfigureNetworks``); the result is named ``digest``.

    Removals come first (networks, then per network peers and leases, then endpoints), then
    additions. A network new to the host comes whole in ``added``."""

    base: DigestField
    digest: DigestField
    added: list[HostNetwork] = []
    removed: list[str] = []
    """Networks the host no longer carries, by name."""
    changed: list[NetworkChange] = []
    endpoints_added: list[HostEndpoint] = []
    endpoints_removed: list[EndpointRef] = []


NetworkCommand = ConfigureNetworks | UpdateNetworks
"""The network commands of a host (common/messages.py's ``AgentCommand`` has them)."""
