"""What a host must do to make its networking what is wanted: observed kernel and DHCP state in,
a list of steps out. Pure and deterministic; the Linux backend (hostagent/netlinux.py) observes,
asks for the plan and carries the steps out, and a plan from a host that already matches is
empty (that is what makes apply idempotent and the self-check cheap).

Order matters and is fixed: the nftables tables first (so isolation holds before a network
carries a frame, and endpoints go before the networks they point into), then forwarding, then
the links nothing wants (VXLAN devices before bridges), then per network its bridge, VXLAN
device, peers and the taps that lost their bridge, and last DHCP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hostagent.netrender import (
    DhcpFiles,
    render_dnsmasq_conf,
    render_dnsmasq_hosts,
    render_rules,
)
from hostagent.netwanted import Wanted, WantedNetwork

BRIDGE_PREFIX = "stbr"
VXLAN_PREFIX = "stvx"
TAP_PREFIX = "stt"
VXLAN_PORT = 4789
ZERO_MAC = "00:00:00:00:00:00"
"""The FDB address of head-end replication: broadcast and unknown frames go to every peer."""


# --------------------------------------------------------------------------- observed


@dataclass(frozen=True, slots=True)
class VxlanInfo:
    vni: int
    local: str
    port: int
    learning: bool


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    kind: str
    """``bridge``, ``vxlan``, ``tun``, ``veth``, ... ("" when the kernel does not say)."""
    mtu: int = 1500
    mac: str = ""
    up: bool = False
    master: str | None = None
    alias: str = ""
    addresses: frozenset[str] = frozenset()
    """IPv4 addresses as ``a.b.c.d/n``."""
    vxlan: VxlanInfo | None = None


@dataclass(frozen=True, slots=True)
class DhcpState:
    running: bool
    conf: str
    hosts: str


@dataclass(frozen=True, slots=True)
class Observed:
    links: dict[str, Link] = field(default_factory=dict)
    peers: dict[str, frozenset[str]] = field(default_factory=dict)
    """Per VXLAN device, the destinations of its all-zeros FDB entries."""
    dhcp: dict[int, DhcpState] = field(default_factory=dict)
    """Per VNI, the dnsmasq the agent's state directory knows of."""
    rules: str | None = ""
    """The agent's nftables tables as last loaded ("" when absent, None when present but
    not known to be the current text, e.g. after an agent restart)."""
    forwarding: bool = True


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class LoadRules:
    tables: str
    """The tables to load in place of the agent's ("" removes them)."""


@dataclass(frozen=True, slots=True)
class EnableForwarding:
    pass


@dataclass(frozen=True, slots=True)
class DeleteLink:
    name: str


@dataclass(frozen=True, slots=True)
class AddBridge:
    name: str


@dataclass(frozen=True, slots=True)
class AddVxlan:
    name: str
    vni: int
    local: str


@dataclass(frozen=True, slots=True)
class SetLink:
    """``ip link set``: only the fields given change; the link is brought up."""

    name: str
    mac: str | None = None
    mtu: int | None = None
    master: str | None = None


@dataclass(frozen=True, slots=True)
class AddAddress:
    link: str
    cidr: str


@dataclass(frozen=True, slots=True)
class DeleteAddress:
    link: str
    cidr: str


@dataclass(frozen=True, slots=True)
class AddPeer:
    vxlan: str
    address: str


@dataclass(frozen=True, slots=True)
class DeletePeer:
    vxlan: str
    address: str


@dataclass(frozen=True, slots=True)
class StartDhcp:
    """Write the files and (re)start the network's dnsmasq."""

    vni: int
    conf: str
    hosts: str


@dataclass(frozen=True, slots=True)
class ReloadDhcp:
    """Rewrite the static leases and SIGHUP the running dnsmasq (leases were only added)."""

    vni: int
    hosts: str


@dataclass(frozen=True, slots=True)
class StopDhcp:
    vni: int


Step = (
    LoadRules
    | EnableForwarding
    | DeleteLink
    | AddBridge
    | AddVxlan
    | SetLink
    | AddAddress
    | DeleteAddress
    | AddPeer
    | DeletePeer
    | StartDhcp
    | ReloadDhcp
    | StopDhcp
)


# --------------------------------------------------------------------------- plan


def plan(
    wanted: Wanted,
    observed: Observed,
    *,
    underlay_ip: str,
    state_dir: Path,
    dhcp_as_root: bool = False,
) -> list[Step]:
    """The steps that take ``observed`` to ``wanted``; [] when it is there already."""
    steps: list[Step] = []
    tables = render_rules(wanted)
    if observed.rules != tables:
        steps.append(LoadRules(tables))
    if not wanted.empty and not observed.forwarding:
        steps.append(EnableForwarding())
    steps += _unwanted_links(wanted, observed, underlay_ip)
    for net in wanted.networks:
        steps += _network_links(net, observed, underlay_ip)
    for net in wanted.networks:
        steps += _dhcp(net, observed, state_dir, dhcp_as_root)
    wanted_vnis = {net.vni for net in wanted.networks}
    steps += [StopDhcp(vni) for vni in sorted(observed.dhcp) if vni not in wanted_vnis]
    return steps


def unused_leftovers(observed: Observed) -> bool:
    """Whether the host holds objects of the agent's (links, DHCP servers, tables) that no VM
    can be using: there is no tap (``stt*``) on the host at all. Before its first configuration
    a restarted agent removes them then; the scheduler sends nothing to a host that should carry
    no network (its wanted configuration is the empty one, which a fresh agent reports)."""
    names = observed.links.keys()
    if any(name.startswith(TAP_PREFIX) for name in names):
        return False
    ours = any(name.startswith((BRIDGE_PREFIX, VXLAN_PREFIX)) for name in names)
    return ours or bool(observed.dhcp) or observed.rules != ""


def _vxlan_ok(link: Link, net: WantedNetwork, underlay_ip: str) -> bool:
    info = link.vxlan
    return (
        link.kind == "vxlan"
        and info is not None
        and info.vni == net.vni
        and info.local == underlay_ip
        and info.port == VXLAN_PORT
        and info.learning
    )


def _unwanted_links(wanted: Wanted, observed: Observed, underlay_ip: str) -> list[Step]:
    """Links with the agent's prefixes that nothing wants, or that must be made again (wrong
    kind, or a VXLAN device with other parameters): VXLAN devices first."""
    vxlans = {net.vxlan: net for net in wanted.networks}
    bridges = {net.bridge for net in wanted.networks}
    doomed: list[str] = []
    for name, link in sorted(observed.links.items()):
        if name.startswith(VXLAN_PREFIX):
            net = vxlans.get(name)
            if net is None or not _vxlan_ok(link, net, underlay_ip):
                doomed.append(name)
    for name, link in sorted(observed.links.items()):
        if name.startswith(BRIDGE_PREFIX) and (name not in bridges or link.kind != "bridge"):
            doomed.append(name)
    return [DeleteLink(name) for name in doomed]


def _present(observed: Observed, name: str, kind: str) -> Link | None:
    link = observed.links.get(name)
    return link if link is not None and link.kind == kind else None


def _network_links(net: WantedNetwork, observed: Observed, underlay_ip: str) -> list[Step]:
    steps: list[Step] = []
    bridge = _present(observed, net.bridge, "bridge")
    if bridge is None:
        steps += [
            AddBridge(net.bridge),
            SetLink(net.bridge, mac=net.gateway_mac, mtu=net.mtu),
            AddAddress(net.bridge, net.gateway_cidr),
        ]
    else:
        if bridge.mac != net.gateway_mac or bridge.mtu != net.mtu or not bridge.up:
            steps.append(SetLink(net.bridge, mac=net.gateway_mac, mtu=net.mtu))
        steps += [
            DeleteAddress(net.bridge, a) for a in sorted(bridge.addresses) if a != net.gateway_cidr
        ]
        if net.gateway_cidr not in bridge.addresses:
            steps.append(AddAddress(net.bridge, net.gateway_cidr))
    vxlan = observed.links.get(net.vxlan)
    if vxlan is None or not _vxlan_ok(vxlan, net, underlay_ip):
        steps += [
            AddVxlan(net.vxlan, net.vni, underlay_ip),
            SetLink(net.vxlan, mtu=net.mtu, master=net.bridge),
        ]
        had: frozenset[str] = frozenset()
    else:
        if vxlan.master != net.bridge or vxlan.mtu != net.mtu or not vxlan.up:
            steps.append(SetLink(net.vxlan, mtu=net.mtu, master=net.bridge))
        had = observed.peers.get(net.vxlan, frozenset())
    steps += [DeletePeer(net.vxlan, peer) for peer in sorted(had - net.peers)]
    steps += [AddPeer(net.vxlan, peer) for peer in sorted(net.peers - had)]
    steps += [
        SetLink(link.name, master=net.bridge)
        for link in sorted(observed.links.values(), key=lambda link: link.name)
        if link.name.startswith(TAP_PREFIX)
        and link.alias == net.bridge
        and (link.master != net.bridge or not link.up)
    ]
    return steps


def _dhcp(net: WantedNetwork, observed: Observed, state_dir: Path, as_root: bool) -> list[Step]:
    conf = render_dnsmasq_conf(net, DhcpFiles(state_dir, net.vni), as_root=as_root)
    hosts = render_dnsmasq_hosts(net)
    now = observed.dhcp.get(net.vni)
    bridge_made = _present(observed, net.bridge, "bridge") is None
    if now is None or not now.running or now.conf != conf or bridge_made:
        return [StartDhcp(net.vni, conf, hosts)]
    if now.hosts == hosts:
        return []
    if set(now.hosts.splitlines()) <= set(hosts.splitlines()):
        return [ReloadDhcp(net.vni, hosts)]
    return [StartDhcp(net.vni, conf, hosts)]  # a lease went away: forget it (see netrender)
