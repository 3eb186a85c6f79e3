"""The text of a host's networking: nftables tables, dnsmasq files and the commands of link
steps, and reading ``ip``/``bridge`` JSON back."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.network_messages import (
    ConfigureNetworks,
    EndpointProtocol,
    HostEndpoint,
    HostNetwork,
    NicLease,
)
from hostagent.dnsmasq import run_as_root
from hostagent.netlinux import check_host_tools, link_commands, parse_links, parse_peers
from hostagent.netplan import AddPeer, AddVxlan, SetLink, VxlanInfo
from hostagent.netrender import (
    DhcpFiles,
    render_dnsmasq_conf,
    render_dnsmasq_hosts,
    render_rules,
    rules_replace,
)
from hostagent.netwanted import NOTHING, Wanted, check_config

WEB = HostNetwork(
    vnet="web", vni=4096, cidr="10.214.0.0/24", gateway="10.214.0.1",
    leases=[NicLease(vm="web-2", mac="52:54:00:00:00:02", ip="10.214.0.11"),
            NicLease(vm="web-1", mac="52:54:00:00:00:01", ip="10.214.0.10")],
)  # fmt: skip
DB = HostNetwork(vnet="db", vni=4097, cidr="10.214.1.0/24", gateway="10.214.1.1")


def chain(rules: str, family: str, name: str) -> list[str]:
    """The rules of one chain of the agent's ``family`` table, one per line."""
    table = rules.split(f"table {family} stratus {{\n")[1].split("\n}\n")[0]
    body = table.split(f"\tchain {name} {{\n")[1].split("\n\t}")[0]
    return [line.strip() for line in body.splitlines()[1:]]  # after the hook line


def wanted(*endpoints: HostEndpoint) -> Wanted:
    config = ConfigureNetworks(networks=[WEB, DB], endpoints=list(endpoints), digest="d")
    return check_config(config, underlay_ip="10.213.0.2")


def test_no_network_no_tables_and_replacing_is_one_transaction() -> None:
    assert render_rules(NOTHING) == ""
    script = rules_replace("")
    assert script.splitlines() == [
        "table inet stratus", "delete table inet stratus",
        "table bridge stratus", "delete table bridge stratus",
    ]  # fmt: skip


def test_endpoints_are_dnat_with_allow_as_a_source_match_and_others_refused() -> None:
    rules = render_rules(
        wanted(
            HostEndpoint(vm="web-1", vm_ip="10.214.0.10", vm_port=80, public_port=20080),
            HostEndpoint(vm="web-1", vm_ip="10.214.0.10", vm_port=53, public_port=20053,
                         protocol=EndpointProtocol.UDP, allow=["10.213.0.0/16"]),
        )
    )  # fmt: skip
    local = "meta nfproto ipv4 fib daddr type local"
    assert chain(rules, "inet", "prerouting") == [
        f"{local} tcp dport 20080 dnat ip to 10.214.0.10:80",
        f"{local} udp dport 20053 ip saddr {{ 10.213.0.0/16 }} dnat ip to 10.214.0.10:53",
    ]
    assert chain(rules, "inet", "output") == [
        f"{local} tcp dport 20080 dnat ip to 10.214.0.10:80",
        f"{local} udp dport 20053 dnat ip to 10.214.0.10:53",  # the host itself is not bound
    ]
    refused = [line for line in chain(rules, "inet", "input") if "reject" in line]
    assert refused == ["udp dport 20053 fib daddr type local reject"], "no allow: open to all"


def test_networks_are_isolated_and_gateways_kept_off_vxlan() -> None:
    rules = render_rules(wanted())
    lines = chain(rules, "inet", "forward")
    assert lines.pop(0) == 'ip daddr { 10.214.0.0/24, 10.214.1.0/24 } oifname != "stbr*" drop'
    assert lines[:3] == [
        'iifname "stbr4096" oifname "stbr4096" accept',
        'iifname "stbr4097" oifname "stbr4097" accept',
        'iifname "stbr*" oifname "stbr*" drop',
    ]
    assert 'oifname "stbr*" ct status dnat accept' in lines
    assert lines[-1] == 'iifname "stbr*" drop'
    assert 'iifname "stbr4096" ip daddr 10.214.0.1 icmp type echo-request accept' in rules
    assert chain(rules, "bridge", "prerouting") == [
        'iifname "stvx*" ether saddr { 02:73:74:00:10:00, 02:73:74:00:10:01 } drop'
    ]
    assert chain(rules, "bridge", "input") == ['iifname "stvx*" drop']
    assert chain(rules, "bridge", "output") == ['oifname "stvx*" drop']


def test_dnsmasq_serves_static_leases_only_with_router_and_mtu() -> None:
    [web, _] = wanted().networks
    files = DhcpFiles(Path("/state"), 4096)
    conf = render_dnsmasq_conf(web, files).splitlines()
    for line in (
        "port=0", "interface=stbr4096", "dhcp-range=10.214.0.0,static,255.255.255.0,infinite",
        "dhcp-hostsfile=/state/dnsmasq-4096.hosts", "dhcp-option=option:router,10.214.0.1",
        "dhcp-option=option:mtu,1450", "leasefile-ro", "pid-file=/state/dnsmasq-4096.pid",
    ):  # fmt: skip
        assert line in conf
    assert "user=root" not in conf and "user=root" in render_dnsmasq_conf(web, files, as_root=True)
    assert render_dnsmasq_hosts(web).splitlines() == [
        "52:54:00:00:00:01,10.214.0.10,web-1,infinite",
        "52:54:00:00:00:02,10.214.0.11,web-2,infinite",
    ]


def words(text: str) -> list[str]:
    return text.split()


def test_link_steps_are_ip_and_bridge_commands() -> None:
    assert link_commands(AddVxlan("stvx7", 7, "10.213.0.2")) == [
        words("ip link add name stvx7 type vxlan id 7 dstport 4789 learning local 10.213.0.2"),
        words("ip link set dev stvx7 addrgenmode none"),
    ]
    assert link_commands(SetLink("stbr7", mac="02:73:74:00:00:07", mtu=1450)) == [
        words("ip link set dev stbr7 address 02:73:74:00:00:07 mtu 1450 up")
    ]
    assert link_commands(AddPeer("stvx7", "10.213.0.6")) == [
        words("bridge fdb append 00:00:00:00:00:00 dev stvx7 dst 10.213.0.6")
    ]


IP_JSON = """[
 {"ifname": "stbr7", "mtu": 1450, "address": "02:73:74:00:00:07", "flags": ["UP"],
  "linkinfo": {"info_kind": "bridge", "info_data": {"stp_state": 0}},
  "addr_info": [{"family": "inet", "local": "10.214.0.1", "prefixlen": 24},
                {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
 {"ifname": "stvx7", "mtu": 1450, "master": "stbr7", "flags": ["BROADCAST"],
  "linkinfo": {"info_kind": "vxlan",
               "info_data": {"id": 7, "local": "10.213.0.2", "port": 4789, "learning": true}},
  "addr_info": []},
 {"ifname": "stt0011aabb0", "ifalias": "stbr7", "flags": ["UP"],
  "linkinfo": {"info_kind": "tun"}}
]"""
FDB_JSON = """[
 {"mac": "00:00:00:00:00:00", "ifname": "stvx7", "dst": "10.213.0.6", "state": "permanent"},
 {"mac": "00:00:00:00:00:00", "ifname": "stvx7", "dst": "10.213.0.10"},
 {"mac": "aa:bb:cc:dd:ee:ff", "ifname": "stvx7", "dst": "10.213.0.6"},
 {"mac": "02:73:74:00:00:07", "ifname": "stbr7", "master": "stbr7"}
]"""


def test_ip_and_bridge_json_is_read_back() -> None:
    links = parse_links(IP_JSON)
    assert links["stbr7"].addresses == {"10.214.0.1/24"} and links["stbr7"].up
    assert links["stvx7"].vxlan == VxlanInfo(7, "10.213.0.2", 4789, True)
    assert links["stvx7"].master == "stbr7" and not links["stvx7"].up
    assert (links["stt0011aabb0"].kind, links["stt0011aabb0"].alias) == ("tun", "stbr7")
    assert parse_peers(FDB_JSON) == {"stvx7": {"10.213.0.6", "10.213.0.10"}}


def test_dnsmasq_stays_root_only_where_its_user_could_not_read_the_leases() -> None:
    # Not under pytest's tmp_path: pytest keeps that private (0700) itself; /tmp is 1777.
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        shared = Path(top) / "shared" / "network"
        shared.mkdir(parents=True)
        for directory in (Path(top), shared.parent, shared):
            directory.chmod(0o755)
        assert not run_as_root(shared)
        shared.parent.chmod(0o700)  # a private data_dir
        assert run_as_root(shared)
        assert run_as_root(shared.parent / "not-yet" / "network")


def test_a_host_without_the_network_tools_is_told_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"apt-get install .* dnsmasq-base"):
        check_host_tools()
