"""The Linux network backend with real kernel objects, in network namespaces the tests create.

Hosts are namespaces, guests are namespaces plugged into a host's bridge (tests/netkit.py):
they take their address by DHCP from the backend's dnsmasq, so what a VM would see is checked
in milliseconds. Skipped without root and the tools (with the apt line); required in CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import NetworkError
from common.netconfig import NetConfig, digest_of
from common.network_messages import (
    ConfigureNetworks,
    HostEndpoint,
    HostNetwork,
    NetworkChange,
    NicLease,
    UpdateNetworks,
)
from common.sumdigest import digest_text
from hostagent import dnsmasq
from hostagent.netlinux import LinuxNetworks, parse_links, parse_peers
from hostagent.netplan import Link
from hostagent.netrender import DhcpFiles
from hostagent.netwanted import gateway_mac
from tests.netkit import (
    Host,
    Netbed,
    clean_leftovers,
    http_get,
    in_netns,
    pings,
    require_netns,
    serve_http,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

A, B = 4096, 4097
MAC_1, MAC_2, MAC_3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Netbed]:
    require_netns()
    clean_leftovers()
    testbed = Netbed(tmp_path)
    try:
        yield testbed
    finally:
        testbed.close([path.parent for path in tmp_path.rglob("dnsmasq-*.pid")])


def network(
    vni: int = A,
    *,
    peers: tuple[str, ...] = (),
    leases: tuple[tuple[str, str, str], ...] = (),
    mtu: int = 1450,
) -> HostNetwork:
    third = vni - A
    return HostNetwork(
        vnet=f"net-{vni}",
        vni=vni,
        cidr=f"10.214.{third}.0/24",
        gateway=f"10.214.{third}.1",
        mtu=mtu,
        peers=sorted(peers),
        leases=[NicLease(vm=vm, mac=mac, ip=ip) for vm, mac, ip in leases],
    )


def config(
    *networks: HostNetwork, endpoints: tuple[HostEndpoint, ...] = (), digest: str = "d1"
) -> ConfigureNetworks:
    return ConfigureNetworks(networks=list(networks), endpoints=list(endpoints), digest=digest)


def backend(host: Host, workdir: Path, **kwargs: float) -> LinuxNetworks:
    underlay = host.underlay_ip or host.outside
    return LinuxNetworks(workdir / host.netns, underlay, netns=host.netns, **kwargs)


def links(host: Host) -> dict[str, Link]:
    return parse_links(in_netns(host.netns, "ip", "-d", "-j", "addr", "show").stdout)


def ifindexes(host: Host) -> dict[str, int]:
    out = in_netns(host.netns, "ip", "-j", "link", "show").stdout
    return {link["ifname"]: link["ifindex"] for link in json.loads(out)}


def ours(host: Host) -> set[str]:
    return {name for name in links(host) if name.startswith(("stbr", "stvx"))}


def peers(host: Host, vni: int) -> frozenset[str]:
    out = in_netns(host.netns, "bridge", "-j", "fdb", "show").stdout
    return parse_peers(out).get(f"stvx{vni}", frozenset())


def tables(host: Host) -> str:
    return in_netns(host.netns, "nft", "list", "ruleset").stdout


def dhcp_pid(net: LinuxNetworks, vni: int) -> int | None:
    return dnsmasq.running_pid(DhcpFiles(net.state_dir, vni))


async def test_apply_builds_a_network_that_serves_dhcp_and_applying_again_changes_nothing(
    bed: Netbed, tmp_path: Path
) -> None:
    h1 = bed.host("h1")
    net = backend(h1, tmp_path)
    leases = (("web-1", MAC_1, "10.214.0.10"),)
    want = config(network(A, peers=(h1.root_addr,), leases=leases), digest="d1")
    await net.apply(want)

    found = links(h1)
    bridge, vxlan = found["stbr4096"], found["stvx4096"]
    assert (bridge.kind, bridge.mac, bridge.mtu, bridge.up) == (
        "bridge",
        gateway_mac(A),
        1450,
        True,
    )
    assert bridge.addresses == {"10.214.0.1/24"}
    assert vxlan.vxlan is not None and vxlan.master == "stbr4096" and vxlan.mtu == 1450
    assert (vxlan.vxlan.vni, vxlan.vxlan.local, vxlan.vxlan.port) == (A, h1.outside, 4789)
    assert vxlan.vxlan.learning
    assert peers(h1, A) == {h1.root_addr}
    assert in_netns(h1.netns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert "table bridge stratus" in tables(h1) and "table inet stratus" in tables(h1)
    assert net.applied_digest == "d1" and net.has_network(A) and not net.has_network(B)

    guest = bed.guest(h1, "stbr4096", MAC_1)
    answer = bed.dhcp(guest)
    assert answer == {
        "ip": "10.214.0.10", "mask": "24", "router": "10.214.0.1", "mtu": "1450",
        "hostname": "web-1",
    }  # fmt: skip
    assert pings(guest.netns, "10.214.0.1")

    before, pid = ifindexes(h1), dhcp_pid(net, A)
    await net.apply(want)
    assert await net.check() == []
    restarted = backend(h1, tmp_path)  # the agent restarts: it adopts what is right
    await restarted.apply(want)
    assert await restarted.check() == []
    assert ifindexes(h1) == before and dhcp_pid(restarted, A) == pid is not None


async def test_what_the_configuration_no_longer_names_is_removed_also_after_a_restart(
    bed: Netbed, tmp_path: Path
) -> None:
    h1 = bed.host("h1")
    first = backend(h1, tmp_path)
    await first.apply(config(network(A), network(B), digest="both"))
    assert ours(h1) == {"stbr4096", "stvx4096", "stbr4097", "stvx4097"}
    b_pid = dhcp_pid(first, B)
    assert b_pid is not None
    in_netns(h1.netns, "ip", "link", "add", "stbr77", "type", "bridge")  # left by someone

    second = backend(h1, tmp_path)  # a restarted agent, told only about A
    await second.apply(config(network(A), digest="a"))
    assert ours(h1) == {"stbr4096", "stvx4096"}
    assert dhcp_pid(second, B) is None and not DhcpFiles(second.state_dir, B).conf.exists()
    await wait_until(lambda: not Path(f"/proc/{b_pid}").exists(), message="B's dnsmasq gone")

    await second.apply(config(digest="none"))
    assert ours(h1) == set()
    assert "stratus" not in tables(h1)
    assert dhcp_pid(second, A) is None and list(second.state_dir.glob("dnsmasq-*")) == []
    assert second.applied_digest == "none" and not second.has_network(A)


async def test_leftovers_no_vm_uses_are_removed_before_any_configuration(
    bed: Netbed, tmp_path: Path
) -> None:
    """A host that should carry no network is sent no configuration: a restarted agent removes
    what its predecessor left once nothing can be using it (no tap on the host)."""
    h1 = bed.host("h1")
    await backend(h1, tmp_path).apply(config(network(A), digest="before"))
    in_netns(h1.netns, "ip", "tuntap", "add", "dev", "sttdeadbeef0", "mode", "tap")
    restarted = backend(h1, tmp_path)
    assert await restarted.check() == [], "a VM may still use them"
    assert ours(h1) == {"stbr4096", "stvx4096"} and dhcp_pid(restarted, A) is not None

    in_netns(h1.netns, "ip", "link", "del", "sttdeadbeef0")  # that VM is gone
    assert await restarted.check() != []
    assert ours(h1) == set() and "stratus" not in tables(h1)
    assert dhcp_pid(restarted, A) is None and restarted.applied_digest == ""
    assert await restarted.check() == []


async def test_peers_follow_the_configuration(bed: Netbed, tmp_path: Path) -> None:
    h1 = bed.host("h1")
    net = backend(h1, tmp_path)
    p1, p2, p3 = "10.213.255.1", "10.213.255.2", "10.213.255.3"
    await net.apply(config(network(A, peers=(p1, p2))))
    assert peers(h1, A) == {p1, p2}
    await net.apply(config(network(A, peers=(p2, p3)), digest="d2"))
    assert peers(h1, A) == {p2, p3}
    await net.apply(config(network(A), digest="d3"))
    assert peers(h1, A) == set()


async def test_an_update_makes_the_configuration_it_leads_to_and_one_on_another_is_refused(
    bed: Netbed, tmp_path: Path
) -> None:
    h1 = bed.host("h1")
    net = backend(h1, tmp_path)
    p1, p2 = "10.213.255.1", "10.213.255.2"
    first = config(network(A, peers=(p1,), leases=(("vm-1", MAC_1, "10.214.0.10"),)))
    first.digest = digest_of(first)
    await net.apply(first)
    held = NetConfig.of(first)
    update = UpdateNetworks(
        base=held.digest,
        digest="",
        changed=[
            NetworkChange(
                vnet=f"net-{A}",
                peers_added=[p2],
                peers_removed=[p1],
                leases_added=[NicLease(vm="vm-2", mac=MAC_2, ip="10.214.0.11")],
            )
        ],
    )
    update.digest = digest_text(held.total + held.shift(update))
    stale = UpdateNetworks(base="0123456789abcdef", digest="fedcba9876543210")
    with pytest.raises(NetworkError):
        await net.update(stale)
    assert net.applied_digest == first.digest and peers(h1, A) == {p1}
    await net.update(update)
    assert net.applied_digest == update.digest
    assert peers(h1, A) == {p2}
    assert bed.dhcp(bed.guest(h1, "stbr4096", MAC_2))["ip"] == "10.214.0.11"


async def test_new_leases_reload_dhcp_and_a_freed_address_goes_to_its_next_vm(
    bed: Netbed, tmp_path: Path
) -> None:
    h1 = bed.host("h1")
    net = backend(h1, tmp_path)
    await net.apply(config(network(A, leases=(("vm-1", MAC_1, "10.214.0.10"),))))
    pid = dhcp_pid(net, A)
    assert bed.dhcp(bed.guest(h1, "stbr4096", MAC_1))["ip"] == "10.214.0.10"

    two = (("vm-1", MAC_1, "10.214.0.10"), ("vm-2", MAC_2, "10.214.0.11"))
    await net.apply(config(network(A, leases=two), digest="d2"))
    assert dhcp_pid(net, A) == pid, "added leases: reloaded, not restarted"
    assert bed.dhcp(bed.guest(h1, "stbr4096", MAC_2))["ip"] == "10.214.0.11"

    # vm-1 is deleted and its address given to vm-3: dnsmasq must not keep it for vm-1's MAC.
    moved = (("vm-2", MAC_2, "10.214.0.11"), ("vm-3", MAC_3, "10.214.0.10"))
    await net.apply(config(network(A, leases=moved), digest="d3"))
    assert bed.dhcp(bed.guest(h1, "stbr4096", MAC_3)) == {
        "ip": "10.214.0.10", "mask": "24", "router": "10.214.0.1", "mtu": "1450",
        "hostname": "vm-3",
    }  # fmt: skip


async def test_the_self_check_heals_a_killed_dnsmasq_a_deleted_bridge_and_flushed_rules(
    bed: Netbed, tmp_path: Path
) -> None:
    h1 = bed.host("h1")
    net = backend(h1, tmp_path, selfcheck_interval_s=0.1)
    await net.apply(config(network(A, leases=(("vm-1", MAC_1, "10.214.0.10"),))))
    in_netns(h1.netns, "ip", "tuntap", "add", "dev", "sttdeadbeef0", "mode", "tap")
    in_netns(
        h1.netns,
        "ip",
        "link",
        "set",
        "dev",
        "sttdeadbeef0",
        "master",
        "stbr4096",
        "alias",
        "stbr4096",
        "up",
    )  # fmt: skip  (a VM's tap, as the driver makes it)
    pid = dhcp_pid(net, A)
    assert pid is not None

    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: dhcp_pid(net, A) is None, message="dnsmasq dead")
    assert [type(step).__name__ for step in await net.check()] == ["StartDhcp"]
    assert dhcp_pid(net, A) not in (None, pid)

    selfcheck = asyncio.create_task(net.run_selfcheck())
    try:
        for argv in (
            ("ip", "link", "del", "stbr4096"),
            ("nft", "delete", "table", "inet", "stratus"),
        ):
            done = in_netns(h1.netns, *argv)
            assert done.returncode == 0, done.stderr

        def healed() -> bool:
            found = links(h1)
            return (
                net.heals >= 2
                and "stbr4096" in found
                and found["stvx4096"].master == "stbr4096"
                and found["sttdeadbeef0"].master == "stbr4096"
                and "table inet stratus" in tables(h1)
            )

        await wait_until(healed, timeout_s=10, message="bridge, ports and rules back")
    finally:
        selfcheck.cancel()
    assert links(h1)["stbr4096"].addresses == {"10.214.0.1/24"}
    assert bed.dhcp(bed.guest(h1, "stbr4096", MAC_1))["ip"] == "10.214.0.10"
    assert net.heals >= 2


async def test_an_apply_that_failed_half_way_is_finished_by_the_self_check(
    bed: Netbed, tmp_path: Path
) -> None:
    h1 = bed.host("h1")
    underlay = "10.213.255.77"  # not on any interface of the host yet
    net = LinuxNetworks(tmp_path / h1.netns, underlay, netns=h1.netns)
    with pytest.raises(NetworkError, match="on no interface"):
        await net.apply(config(network(A), digest="d1"))
    assert net.applied_digest == "" and not net.has_network(A) and ours(h1) == set()

    in_netns(h1.netns, "ip", "addr", "add", f"{underlay}/32", "dev", "lo")
    assert await net.check() != []
    assert net.applied_digest == "d1" and net.has_network(A)
    assert ours(h1) == {"stbr4096", "stvx4096"}


@pytest.mark.parametrize(
    "bad",
    [
        config(network(A, leases=(("vm-1", MAC_1, "10.214.7.10"),)), network(B), digest="bad"),
        config(
            network(A),
            network(B),
            HostNetwork(vnet="c", vni=9, cidr="10.214.0.0/16", gateway="10.214.0.1"),
            digest="bad",
        ),
        config(
            network(A),
            network(B),
            endpoints=(HostEndpoint(vm="x", vm_ip="10.213.9.9", vm_port=80, public_port=20080),),
            digest="bad",
        ),
    ],
    ids=["lease-outside-the-range", "overlapping-ranges", "endpoint-outside-every-network"],
)
async def test_a_bad_configuration_is_refused_and_changes_nothing(
    bed: Netbed, tmp_path: Path, bad: ConfigureNetworks
) -> None:
    h1 = bed.host("h1")
    net = backend(h1, tmp_path)
    await net.apply(config(network(A), digest="good"))
    before = ifindexes(h1), tables(h1), dhcp_pid(net, A)
    with pytest.raises(NetworkError):
        await net.apply(bad)
    assert net.applied_digest == "good"
    assert (ifindexes(h1), tables(h1), dhcp_pid(net, A)) == before
    assert not net.has_network(B)


async def test_networks_are_isolated_and_endpoints_forward_to_their_vm(
    bed: Netbed, tmp_path: Path
) -> None:
    h1 = bed.host("h1")
    net = backend(h1, tmp_path)
    a_leases = (("a-1", MAC_1, "10.214.0.10"), ("a-2", MAC_2, "10.214.0.11"))
    b_leases = (("b-1", MAC_3, "10.214.1.10"),)
    endpoints = (
        HostEndpoint(vm="a-1", vm_ip="10.214.0.10", vm_port=80, public_port=20080),
        HostEndpoint(
            vm="a-1", vm_ip="10.214.0.10", vm_port=80, public_port=20081, allow=["10.214.200.0/24"]
        ),  # fmt: skip  (not the root namespace)
    )
    await net.apply(config(network(A, leases=a_leases), network(B, leases=b_leases),
                           endpoints=endpoints))  # fmt: skip
    a1, a2 = bed.guest(h1, "stbr4096", MAC_1), bed.guest(h1, "stbr4096", MAC_2)
    b1 = bed.guest(h1, "stbr4097", MAC_3)
    for guest in (a1, a2, b1):
        assert bed.dhcp(guest)
    httpd = serve_http(a1.netns, tmp_path / "www-a1", "page of a-1")
    try:
        await wait_until(lambda: http_get(a2.netns, "10.214.0.10") == "page of a-1")
        assert http_get(None, h1.outside, 20080) == "page of a-1", "endpoint from outside"
        assert http_get(h1.netns, h1.outside, 20080) == "page of a-1", "from the host itself"
        assert http_get(h1.netns, "127.0.0.1", 20080) == "page of a-1", "also as localhost"
        assert http_get(None, h1.outside, 20081) == "", "a source outside allow is refused"

        assert pings(b1.netns, "10.214.1.1"), "a guest reaches its own gateway"
        assert not pings(b1.netns, "10.214.0.10"), "but no guest of another network"
        assert not pings(b1.netns, "10.214.0.1"), "nor that network's gateway"
        assert http_get(b1.netns, "10.214.0.10") == ""
        assert http_get(b1.netns, "10.214.1.1", 20080) == "", "nor through an endpoint"
        assert not pings(a1.netns, h1.root_addr), "guests route nowhere else"
    finally:
        httpd.kill()
        httpd.wait()


async def test_each_host_keeps_its_gateway_local_so_endpoints_answer_after_remote_arps(
    bed: Netbed, tmp_path: Path
) -> None:
    """The regression test of the gateway design (hostagent/netrender.py): without the bridge
    rules the remote host's ARP requests made the guest send its replies to the remote bridge
    and the endpoint answered nothing."""
    h1, h2 = bed.host("h1"), bed.host("h2")
    bed.join(h1, h2)
    leases = (("a-1", MAC_1, "10.214.0.10"), ("a-2", MAC_2, "10.214.0.11"))
    net1, net2 = backend(h1, tmp_path), backend(h2, tmp_path)
    endpoint = HostEndpoint(vm="a-1", vm_ip="10.214.0.10", vm_port=80, public_port=20080)
    await net1.apply(config(network(A, peers=(h2.underlay_ip,), leases=leases[:1]),
                            endpoints=(endpoint,)))  # fmt: skip
    await net2.apply(config(network(A, peers=(h1.underlay_ip,), leases=leases[1:])))
    a1, a2 = bed.guest(h1, "stbr4096", MAC_1), bed.guest(h2, "stbr4096", MAC_2)
    assert bed.dhcp(a1)["ip"] == "10.214.0.10" and bed.dhcp(a2)["ip"] == "10.214.0.11"
    httpd = serve_http(a1.netns, tmp_path / "www-a1", "page of a-1")
    try:
        await wait_until(lambda: http_get(a2.netns, "10.214.0.10") == "page of a-1")
        for attempt in range(5):
            in_netns(h2.netns, "ip", "neigh", "flush", "dev", "stbr4096")
            in_netns(h2.netns, "busybox", "ping", "-c", "1", "-W", "1", f"10.214.0.{50 + attempt}")
            assert http_get(None, h1.outside, 20080) == "page of a-1", attempt
        neigh = in_netns(a1.netns, "ip", "neigh", "show", "10.214.0.1").stdout
        assert gateway_mac(A) in neigh
        arping = in_netns(a2.netns, "busybox", "arping", "-c", "2", "-I", "eth0", "10.214.0.1")
        assert arping.stdout.count("reply from") == 2, "one answer per probe: the local gateway"
    finally:
        httpd.kill()
        httpd.wait()
