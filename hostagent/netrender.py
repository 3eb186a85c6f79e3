"""The text a host's networking is made of: the agent's nftables tables and each network's
dnsmasq configuration and static leases. Pure: values in, text out.

nftables (one ``inet`` and one ``bridge`` table named ``stratus``, replaced whole and atomically
on every change, so removal of an endpoint or a network needs no bookkeeping):

- **Endpoints**: ``nat prerouting`` DNATs ``public_port`` on any local address to
  ``vm_ip:vm_port`` (only from ``allow`` when given; others are rejected in ``input``); ``nat
  output`` does the same for connections the host itself opens to one of its addresses, and
  those from 127.0.0.1 leave masqueraded as the gateway (the bridges route loopback sources:
  ``route_localnet``; ``input`` drops anything guests send to the host but DHCP, a ping of
  their gateway and replies, so guests cannot use that to reach the host's loopback services).
- **Isolation**: frames stay inside their network's bridge (L2 between guests of one network,
  across hosts through VXLAN, never reaches the ``inet`` hooks). Routed traffic: ``forward``
  drops anything between two different ``stbr*`` bridges, anything routed into a network except
  DNAT-ed endpoint flows and their replies, and anything guests route elsewhere (there is no
  outbound NAT). ``input`` lets guests reach only DHCP and a ping of their own gateway; a guest
  of network B cannot use the gateway addresses of network A (or any other host address).
- **One gateway per host, the same everywhere**: every host carrying a network puts the same
  gateway address on its bridge, with the same MAC (:func:`hostagent.netwanted.gateway_mac`).
  The ``bridge`` table keeps each gateway local: nothing the host itself sends on a bridge
  (ARP replies and requests, DHCP answers) goes out through the VXLAN port (``output``), nothing
  arriving through VXLAN is delivered to the host (``input``), frames claiming a gateway's MAC
  from VXLAN are dropped (``prerouting``) and DHCP never crosses VXLAN (``forward``).

  Measured without these rules (two hosts, one network, a guest on each, busybox ``arping`` of
  the gateway): every probe got two replies, one from each host's bridge, and any ARP request
  the remote host sent in the network (``ping`` of an address in it) overwrote the guest's
  neighbour entry for the gateway with the *remote* bridge's MAC; an endpoint on the guest's
  host then answered 0 of 10 connections, its replies leaving through the other host, which
  has no connection state for them. With the rules: one reply per probe, the gateway entry
  always the local bridge, the endpoint answered 10 of 10 after the same remote ARPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.network_messages import EndpointProtocol
from hostagent.netwanted import Wanted, WantedEndpoint, WantedNetwork

TABLE = "stratus"
BRIDGES = "stbr*"
VXLANS = "stvx*"
DHCP_LEASE = "infinite"


def rules_replace(tables: str) -> str:
    """An ``nft -f`` script that replaces the agent's tables by ``tables`` in one transaction
    (``tables`` empty: removes them)."""
    prelude = "".join(
        f"table {family} {TABLE}\ndelete table {family} {TABLE}\n" for family in ("inet", "bridge")
    )
    return prelude + tables


def render_rules(wanted: Wanted) -> str:
    """The agent's two tables for ``wanted``; empty when it holds no network."""
    if wanted.empty:
        return ""
    return _inet_table(wanted) + _bridge_table(wanted)


def _chain(name: str, hook: str, rules: list[str]) -> str:
    body = "".join(f"\t\t{rule}\n" for rule in rules)
    return f"\tchain {name} {{\n\t\t{hook}; policy accept;\n{body}\t}}\n"


def _dnat(ep: WantedEndpoint, *, with_allow: bool) -> str:
    match = f"meta nfproto ipv4 fib daddr type local {ep.protocol.value} dport {ep.public_port}"
    if with_allow and ep.allow:
        match += " ip saddr { " + ", ".join(str(net) for net in ep.allow) + " }"
    return f"{match} dnat ip to {ep.vm_ip}:{ep.vm_port}"


def _inet_table(wanted: Wanted) -> str:
    nets, eps = wanted.networks, wanted.endpoints
    input_rules = [
        f'iifname "{BRIDGES}" udp dport 67 accept',
        f'iifname "{BRIDGES}" ct state established,related accept',
        *(
            f'iifname "{net.bridge}" ip daddr {net.gateway} icmp type echo-request accept'
            for net in nets
        ),
        f'iifname "{BRIDGES}" drop',
        *(
            f"{ep.protocol.value} dport {ep.public_port} fib daddr type local "
            + ("reject with tcp reset" if ep.protocol is EndpointProtocol.TCP else "reject")
            for ep in eps
            if ep.allow
        ),
    ]
    ranges = ", ".join(str(net.network) for net in nets)
    forward_rules = [
        # Traffic for a guest network leaves through its bridge or not at all (an endpoint
        # whose bridge is missing for a moment must not be routed elsewhere).
        f'ip daddr {{ {ranges} }} oifname != "{BRIDGES}" drop',
        *(f'iifname "{net.bridge}" oifname "{net.bridge}" accept' for net in nets),
        f'iifname "{BRIDGES}" oifname "{BRIDGES}" drop',
        f'oifname "{BRIDGES}" ct status dnat accept',
        f'oifname "{BRIDGES}" ct state established,related accept',
        f'oifname "{BRIDGES}" drop',
        f'iifname "{BRIDGES}" ct state established,related accept',
        f'iifname "{BRIDGES}" drop',
    ]
    return (
        f"table inet {TABLE} {{\n"
        + _chain(
            "prerouting",
            "type nat hook prerouting priority dstnat",
            [_dnat(ep, with_allow=True) for ep in eps],
        )
        + _chain(
            "output",
            "type nat hook output priority -100",
            [_dnat(ep, with_allow=False) for ep in eps],
        )
        + _chain(
            "postrouting",
            "type nat hook postrouting priority srcnat",
            [f'oifname "{BRIDGES}" ct status dnat ip saddr 127.0.0.0/8 masquerade'],
        )
        + _chain("input", "type filter hook input priority filter", input_rules)
        + _chain("forward", "type filter hook forward priority filter", forward_rules)
        + "}\n"
    )


def _bridge_table(wanted: Wanted) -> str:
    macs = ", ".join(net.gateway_mac for net in wanted.networks)
    return (
        f"table bridge {TABLE} {{\n"
        + _chain(
            "prerouting",
            "type filter hook prerouting priority filter",
            [f'iifname "{VXLANS}" ether saddr {{ {macs} }} drop'] if macs else [],
        )
        + _chain(
            "input",
            "type filter hook input priority filter",
            [f'iifname "{VXLANS}" drop'],
        )
        + _chain(
            "output",
            "type filter hook output priority filter",
            [f'oifname "{VXLANS}" drop'],
        )
        + _chain(
            "forward",
            "type filter hook forward priority filter",
            [
                f'oifname "{VXLANS}" udp dport {{ 67, 68 }} drop',
                f'iifname "{VXLANS}" udp dport {{ 67, 68 }} drop',
            ],
        )
        + "}\n"
    )


# --------------------------------------------------------------------------- dnsmasq


@dataclass(frozen=True, slots=True)
class DhcpFiles:
    """The files of one network's dnsmasq, in the agent's network state directory."""

    dir: Path
    vni: int

    def _path(self, suffix: str) -> Path:
        return self.dir / f"dnsmasq-{self.vni}.{suffix}"

    @property
    def conf(self) -> Path:
        return self._path("conf")

    @property
    def hosts(self) -> Path:
        return self._path("hosts")

    @property
    def pid(self) -> Path:
        return self._path("pid")

    @property
    def log(self) -> Path:
        return self._path("log")


def render_dnsmasq_conf(net: WantedNetwork, files: DhcpFiles, *, as_root: bool = False) -> str:
    """DHCP only (no DNS), static leases only, on the network's bridge alone; ``as_root``:
    dnsmasq keeps root instead of its unprivileged user (hostagent/dnsmasq.py ``run_as_root``).

    No lease database (``leasefile-ro``): every lease is static and infinite, and a database
    would keep an address bound to the MAC of a VM that left (dnsmasq then refuses it to the
    next VM given that address), so dnsmasq restarts instead when a lease goes away."""
    return (
        f"# Written by the Stratus agent: network {net.vnet} (vni {net.vni}).\n"
        "port=0\n"
        f"interface={net.bridge}\n"
        "bind-dynamic\n"
        "except-interface=lo\n"
        f"dhcp-range={net.network.network_address},static,{net.network.netmask},{DHCP_LEASE}\n"
        f"dhcp-hostsfile={files.hosts}\n"
        f"dhcp-option=option:router,{net.gateway}\n"
        f"dhcp-option=option:mtu,{net.mtu}\n"
        "dhcp-authoritative\n"
        "leasefile-ro\n"
        f"pid-file={files.pid}\n"
        f"log-facility={files.log}\n" + ("user=root\n" if as_root else "")
    )


def render_dnsmasq_hosts(net: WantedNetwork) -> str:
    """One static lease per line: ``mac,ip,name,lease``."""
    return "".join(f"{lease.mac},{lease.ip},{lease.vm},{DHCP_LEASE}\n" for lease in net.leases)
