"""A host's network configuration is checked before anything is touched: every bad one is
refused with a NetworkError that names what is wrong."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from common.errors import NetworkError
from common.network_messages import (
    ConfigureNetworks,
    EndpointProtocol,
    HostEndpoint,
    HostNetwork,
    NicLease,
)
from hostagent.netwanted import check_config, gateway_mac

UNDERLAY = "10.213.0.2"


def net(**changes: object) -> HostNetwork:
    fields: dict[str, object] = {
        "vnet": "web",
        "vni": 4096,
        "cidr": "10.214.0.0/24",
        "gateway": "10.214.0.1",
        "peers": ["10.213.0.6"],
        "leases": [NicLease(vm="web-1", mac="52:54:00:00:00:01", ip="10.214.0.10")],
    }
    return HostNetwork(**(fields | changes))  # type: ignore[arg-type]


def endpoint(**changes: object) -> HostEndpoint:
    fields: dict[str, object] = {
        "vm": "web-1", "vm_ip": "10.214.0.10", "vm_port": 80, "public_port": 20080,
    }  # fmt: skip
    return HostEndpoint(**(fields | changes))  # type: ignore[arg-type]


def config(*networks: HostNetwork, endpoints: tuple[HostEndpoint, ...] = ()) -> ConfigureNetworks:
    return ConfigureNetworks(networks=list(networks), endpoints=list(endpoints), digest="d")


def test_a_good_configuration_becomes_checked_values() -> None:
    second = net(vnet="db", vni=4097, cidr="10.214.1.0/24", gateway="10.214.1.1", leases=[])
    wanted = check_config(
        config(second, net(), endpoints=(endpoint(allow=["10.213.0.0/16", "10.213.0.0/16"]),)),
        underlay_ip=UNDERLAY,
    )
    assert [n.vni for n in wanted.networks] == [4096, 4097], "sorted by vni"
    web = wanted.networks[0]
    assert (web.bridge, web.vxlan, web.gateway_cidr) == ("stbr4096", "stvx4096", "10.214.0.1/24")
    assert web.gateway == IPv4Address("10.214.0.1") and web.peers == {"10.213.0.6"}
    assert [str(a) for a in wanted.endpoints[0].allow] == ["10.213.0.0/16"], "duplicates merged"
    assert wanted.digest == "d" and not wanted.empty


def test_the_gateway_mac_is_locally_administered_and_names_the_vni() -> None:
    assert gateway_mac(4096) == "02:73:74:00:10:00"
    assert gateway_mac(2**24 - 1) == "02:73:74:ff:ff:ff"
    assert int(gateway_mac(1)[:2], 16) & 0b11 == 0b10, "unicast, locally administered"


BAD = [
    ("vni-zero", config(net(vni=0)), "vni 0"),
    ("vni-too-big", config(net(vni=2**24)), "vni 16777216"),
    ("mtu-too-small", config(net(mtu=500)), "mtu 500"),
    ("cidr-not-a-range", config(net(cidr="10.214.0.0/33")), "cidr"),
    ("cidr-host-bits", config(net(cidr="10.214.0.5/24")), "cidr"),
    ("prefix-too-long", config(net(cidr="10.214.0.0/31", gateway="10.214.0.0")), "holds no"),
    ("gateway-outside", config(net(gateway="10.214.9.1")), "outside"),
    ("gateway-is-broadcast", config(net(gateway="10.214.0.255")), "broadcast"),
    ("peer-not-an-address", config(net(peers=["host-2"])), "not an IPv4 address"),
    ("peer-is-this-host", config(net(peers=[UNDERLAY])), "own underlay"),
    (
        "lease-outside",
        config(net(leases=[NicLease(vm="a", mac="52:54:00:00:00:01", ip="10.214.1.5")])),
        "outside",
    ),
    (
        "lease-is-gateway",
        config(net(leases=[NicLease(vm="a", mac="52:54:00:00:00:01", ip="10.214.0.1")])),
        "gateway",
    ),
    (
        "lease-mac-multicast",
        config(net(leases=[NicLease(vm="a", mac="01:54:00:00:00:01", ip="10.214.0.5")])),
        "multicast",
    ),
    (
        "lease-mac-uppercase",
        config(net(leases=[NicLease(vm="a", mac="52:54:00:00:00:AB", ip="10.214.0.5")])),
        "MAC",
    ),
    (
        "lease-name-for-dhcp",
        config(net(leases=[NicLease(vm="a,b", mac="52:54:00:00:00:01", ip="10.214.0.5")])),
        "host name",
    ),
    (
        "lease-address-twice",
        config(
            net(
                leases=[
                    NicLease(vm="a", mac="52:54:00:00:00:01", ip="10.214.0.5"),
                    NicLease(vm="b", mac="52:54:00:00:00:02", ip="10.214.0.5"),
                ]
            )
        ),
        "appears twice",
    ),
    (
        "vni-twice",
        config(net(), net(vnet="other", cidr="10.214.1.0/24", gateway="10.214.1.1", leases=[])),
        "vni 4096 appears twice",
    ),
    (
        "overlapping",
        config(net(), net(vnet="big", vni=5, cidr="10.214.0.0/16", gateway="10.214.7.1")),
        "overlap",
    ),
    ("endpoint-no-network", config(net(), endpoints=(endpoint(vm_ip="10.213.5.5"),)), "no network"),
    ("endpoint-bad-allow", config(net(), endpoints=(endpoint(allow=["everyone"]),)), "allow"),
    (
        "endpoint-port-twice",
        config(net(), endpoints=(endpoint(), endpoint(vm_port=22))),
        "tcp/20080 appears twice",
    ),
]


@pytest.mark.parametrize(("bad", "says"), [(c, s) for _, c, s in BAD], ids=[i for i, _, _ in BAD])
def test_a_bad_configuration_is_refused_saying_why(bad: ConfigureNetworks, says: str) -> None:
    with pytest.raises(NetworkError, match=says):
        check_config(bad, underlay_ip=UNDERLAY)


def test_the_same_port_may_serve_tcp_and_udp() -> None:
    both = (endpoint(), endpoint(protocol=EndpointProtocol.UDP))
    assert len(check_config(config(net(), endpoints=both), underlay_ip=UNDERLAY).endpoints) == 2
