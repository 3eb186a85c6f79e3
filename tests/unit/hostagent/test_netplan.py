"""The planner of a host's networking: observed state in, steps out. A host that matches plans
nothing; each difference plans exactly the steps that remove it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from common.network_messages import ConfigureNetworks, HostEndpoint, HostNetwork, NicLease
from hostagent.netplan import (
    AddAddress,
    AddBridge,
    AddPeer,
    AddVxlan,
    DeleteAddress,
    DeleteLink,
    DeletePeer,
    DhcpState,
    EnableForwarding,
    Link,
    LoadRules,
    Observed,
    ReloadDhcp,
    SetLink,
    StartDhcp,
    Step,
    StopDhcp,
    VxlanInfo,
    plan,
    unused_leftovers,
)
from hostagent.netrender import DhcpFiles, render_dnsmasq_conf, render_dnsmasq_hosts, render_rules
from hostagent.netwanted import NOTHING, Wanted, check_config, gateway_mac

UNDERLAY = "10.213.0.2"
STATE = Path("/var/lib/stratus/h1/network")
LEASE_1 = NicLease(vm="web-1", mac="52:54:00:00:00:01", ip="10.214.0.10")
LEASE_2 = NicLease(vm="web-2", mac="52:54:00:00:00:02", ip="10.214.0.11")


def wanted(
    *, peers: tuple[str, ...] = ("10.213.0.6",), leases: tuple[NicLease, ...] = (LEASE_1,),
    mtu: int = 1450, cidr: str = "10.214.0.0/24", gateway: str = "10.214.0.1",
    endpoint: bool = True,
) -> Wanted:  # fmt: skip
    network = HostNetwork(vnet="web", vni=4096, cidr=cidr, gateway=gateway, mtu=mtu,
                          peers=list(peers), leases=list(leases))  # fmt: skip
    endpoints = [HostEndpoint(vm="web-1", vm_ip="10.214.0.10", vm_port=80, public_port=20080)]
    config = ConfigureNetworks(
        networks=[network], endpoints=endpoints if endpoint else [], digest="d"
    )
    return check_config(config, underlay_ip=UNDERLAY)


def matching(want: Wanted) -> Observed:
    """The host exactly as ``want`` says (plus a link that is none of the agent's business)."""
    [net] = want.networks
    links = {
        "eth0": Link("eth0", "veth", up=True, addresses=frozenset({f"{UNDERLAY}/30"})),
        net.bridge: Link(
            net.bridge,
            "bridge",
            net.mtu,
            gateway_mac(net.vni),
            True,
            addresses=frozenset({net.gateway_cidr}),
        ),
        net.vxlan: Link(
            net.vxlan,
            "vxlan",
            net.mtu,
            "aa:bb:cc:00:00:01",
            True,
            net.bridge,
            vxlan=VxlanInfo(net.vni, UNDERLAY, 4789, True),
        ),
    }
    dhcp = DhcpState(
        running=True,
        conf=render_dnsmasq_conf(net, DhcpFiles(STATE, net.vni)),
        hosts=render_dnsmasq_hosts(net),
    )
    return Observed(links, {net.vxlan: net.peers}, {net.vni: dhcp}, render_rules(want), True)


def planned(want: Wanted, observed: Observed) -> list[Step]:
    return plan(want, observed, underlay_ip=UNDERLAY, state_dir=STATE)


def test_a_host_that_matches_plans_nothing() -> None:
    assert planned(wanted(), matching(wanted())) == []
    assert planned(NOTHING, Observed()) == []


def test_a_fresh_host_gets_rules_first_then_links_peers_and_dhcp() -> None:
    want = wanted(peers=("10.213.0.6", "10.213.0.10"))
    steps = planned(want, Observed(forwarding=False))
    assert steps[:2] == [LoadRules(render_rules(want)), EnableForwarding()]
    assert steps[2:-1] == [
        AddBridge("stbr4096"),
        SetLink("stbr4096", mac="02:73:74:00:10:00", mtu=1450),
        AddAddress("stbr4096", "10.214.0.1/24"),
        AddVxlan("stvx4096", 4096, UNDERLAY),
        SetLink("stvx4096", mtu=1450, master="stbr4096"),
        AddPeer("stvx4096", "10.213.0.10"),
        AddPeer("stvx4096", "10.213.0.6"),
    ]
    assert isinstance(steps[-1], StartDhcp) and "web-1" in steps[-1].hosts


def test_peers_follow_the_configuration() -> None:
    observed = matching(wanted(peers=("10.213.0.6", "10.213.0.10")))
    steps = planned(wanted(peers=("10.213.0.10", "10.213.0.14")), observed)
    assert steps == [DeletePeer("stvx4096", "10.213.0.6"), AddPeer("stvx4096", "10.213.0.14")]


def test_links_of_the_agent_that_nothing_wants_go_vxlan_first_and_others_stay() -> None:
    observed = matching(wanted())
    links = dict(observed.links)
    links["stbr9"] = Link("stbr9", "bridge")
    links["stvx9"] = Link(
        "stvx9", "vxlan", master="stbr9", vxlan=VxlanInfo(9, UNDERLAY, 4789, True)
    )
    links["docker0"] = Link("docker0", "bridge")
    steps = planned(wanted(), replace(observed, links=links))
    assert steps == [DeleteLink("stvx9"), DeleteLink("stbr9")]


def test_a_vxlan_device_with_other_parameters_is_made_again() -> None:
    observed = matching(wanted())
    links = dict(observed.links)
    links["stvx4096"] = replace(links["stvx4096"], vxlan=VxlanInfo(4096, "10.213.0.99", 4789, True))
    steps = planned(wanted(), replace(observed, links=links))
    assert steps == [
        DeleteLink("stvx4096"),
        AddVxlan("stvx4096", 4096, UNDERLAY),
        SetLink("stvx4096", mtu=1450, master="stbr4096"),
        AddPeer("stvx4096", "10.213.0.6"),
    ]


def test_added_leases_reload_dhcp_and_a_removed_one_restarts_it() -> None:
    one, two = wanted(leases=(LEASE_1,)), wanted(leases=(LEASE_1, LEASE_2))
    [reload] = planned(two, matching(one))
    assert isinstance(reload, ReloadDhcp) and reload.hosts.count("\n") == 2
    [restart] = planned(one, matching(two))
    assert isinstance(restart, StartDhcp) and "web-2" not in restart.hosts


def test_a_new_mtu_changes_links_and_restarts_dhcp() -> None:
    steps = planned(wanted(mtu=1400), matching(wanted()))
    assert steps[:2] == [
        SetLink("stbr4096", mac="02:73:74:00:10:00", mtu=1400),
        SetLink("stvx4096", mtu=1400, master="stbr4096"),
    ]
    assert isinstance(steps[2], StartDhcp) and "option:mtu,1400" in steps[2].conf


def test_a_new_range_moves_the_gateway_address() -> None:
    want = wanted(cidr="10.214.4.0/22", gateway="10.214.4.1", leases=(), endpoint=False)
    steps = [s for s in planned(want, matching(wanted())) if not isinstance(s, LoadRules)]
    assert steps[:2] == [
        DeleteAddress("stbr4096", "10.214.0.1/24"),
        AddAddress("stbr4096", "10.214.4.1/22"),
    ]


def test_a_deleted_bridge_is_made_again_with_its_ports_and_dhcp_restarted() -> None:
    observed = matching(wanted())
    links = {name: link for name, link in observed.links.items() if name != "stbr4096"}
    links["stvx4096"] = replace(links["stvx4096"], master=None)
    links["stt0a1b2c3d0"] = Link("stt0a1b2c3d0", "tun", up=True, alias="stbr4096")
    links["stt99999990"] = Link("stt99999990", "tun", up=True, alias="stbr7")  # not ours
    steps = planned(wanted(), replace(observed, links=links))
    assert steps[:5] == [
        AddBridge("stbr4096"),
        SetLink("stbr4096", mac="02:73:74:00:10:00", mtu=1450),
        AddAddress("stbr4096", "10.214.0.1/24"),
        SetLink("stvx4096", mtu=1450, master="stbr4096"),
        SetLink("stt0a1b2c3d0", master="stbr4096"),
    ]
    assert [type(s) for s in steps[5:]] == [StartDhcp], "dnsmasq bound to the old bridge"


def test_a_dead_dhcp_is_started_and_one_of_no_network_is_stopped() -> None:
    observed = matching(wanted())
    dead = replace(observed.dhcp[4096], running=False)
    stray = DhcpState(running=True, conf="", hosts="")
    steps = planned(wanted(), replace(observed, dhcp={4096: dead, 7: stray}))
    assert [type(s) for s in steps] == [StartDhcp, StopDhcp] and steps[1] == StopDhcp(7)


def test_rules_not_known_after_a_restart_are_loaded_again_and_none_are_removed() -> None:
    observed = matching(wanted())
    assert planned(wanted(), replace(observed, rules=None)) == [LoadRules(render_rules(wanted()))]
    everything = planned(NOTHING, observed)
    assert everything[0] == LoadRules("")
    assert everything[1:] == [DeleteLink("stvx4096"), DeleteLink("stbr4096"), StopDhcp(4096)]


def test_leftovers_count_as_unused_only_without_any_tap_on_the_host() -> None:
    observed = matching(wanted())
    assert unused_leftovers(observed)
    tap = Link("stt0a1b2c3d0", "tun", up=True, alias="stbr4096")
    assert not unused_leftovers(replace(observed, links={**observed.links, tap.name: tap}))
    assert not unused_leftovers(Observed(links={"eth0": Link("eth0", "veth")}))
    assert unused_leftovers(Observed(rules=None)), "tables of unknown content"
