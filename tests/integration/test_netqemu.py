"""Two hosts, real QEMU guests, no scheduler: each host is a network namespace with a Linux
network backend and a QEMU driver, joined to the other by a veth underlay.

Host 1 runs ``a-1`` in network A; host 2 runs ``a-2`` in network A and ``b-1`` in network B.
The guests are the tiny image: DHCP from their host's dnsmasq, busybox httpd on port 80 serving
``stratus-vm NAME``, a root shell on the serial console (the tests type ``ping`` and ``wget``
there). Skipped without QEMU, root or the network tools; required in CI.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.errors import DriverError
from common.messages import ObservedState, VmSpec
from common.network_messages import ConfigureNetworks, HostEndpoint, HostNetwork, NicLease, NicSpec
from common.resources import Resources
from hostagent.drivers.qemu import QemuDriver
from hostagent.drivers.qemuproc import QemuSettings, pid_alive, read_pid, read_serial
from hostagent.images import ImageCache
from hostagent.netlinux import LinuxNetworks
from hostagent.network import tap_name
from tests.netkit import Host, Netbed, clean_leftovers, http_get, in_netns, require_netns
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(300)]

BOOT_S = 120.0
"""Generous: three guests boot at once on a machine other tests also load."""
A = HostNetwork(vnet="net-a", vni=4096, cidr="10.214.0.0/24", gateway="10.214.0.1")
B = HostNetwork(vnet="net-b", vni=4097, cidr="10.214.1.0/24", gateway="10.214.1.1")
_marks = itertools.count()


@dataclass(frozen=True)
class Guest:
    name: str
    network: HostNetwork
    ip: str
    mac: str

    @property
    def lease(self) -> NicLease:
        return NicLease(vm=self.name, mac=self.mac, ip=self.ip)

    def spec(self) -> VmSpec:
        nic = NicSpec(
            index=0, vnet=self.network.vnet, vni=self.network.vni, mac=self.mac, ip=self.ip,
            prefix_len=24, gateway=self.network.gateway,
        )  # fmt: skip
        return VmSpec(
            name=self.name, size="Tiny", cpu_milli=1000, mem_mib=96, image="tiny", nics=[nic]
        )


A1 = Guest("a-1", A, "10.214.0.10", "52:54:00:00:00:a1")
A2 = Guest("a-2", A, "10.214.0.11", "52:54:00:00:00:a2")
B1 = Guest("b-1", B, "10.214.1.10", "52:54:00:00:00:b1")


@dataclass
class Node:
    host: Host
    networks: LinuxNetworks
    driver: QemuDriver


@pytest.fixture(scope="module")
def kit() -> Path:
    return boot_kit()


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Netbed]:
    require_netns()
    clean_leftovers()
    testbed = Netbed(tmp_path)
    try:
        yield testbed
    finally:
        testbed.close([path.parent for path in tmp_path.rglob("dnsmasq-*.pid")])


def make_driver(kit: Path, root: Path, netns: str) -> QemuDriver:
    settings = QemuSettings(
        qemu_binary="qemu-system-x86_64", accel="tcg", kernel=kit / "vmlinux",
        initramfs=kit / "initramfs.gz", boot_timeout_s=BOOT_S, netns=netns,
    )  # fmt: skip
    return QemuDriver(
        settings, root, ImageCache(root / "images", kit), capacity=Resources(4000, 1024)
    )


@pytest.fixture
async def nodes(bed: Netbed, kit: Path, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    h1, h2 = bed.host("h1"), bed.host("h2")
    bed.join(h1, h2)
    made = []
    for host in (h1, h2):
        networks = LinuxNetworks(
            tmp_path / host.netns / "network", host.underlay_ip, netns=host.netns
        )
        made.append(
            Node(host, networks, make_driver(kit, tmp_path / host.netns / "qemu", host.netns))
        )
    try:
        yield made[0], made[1]
    finally:
        for node in made:  # guests first: a namespace lives on while QEMU holds its taps
            for vm in node.driver.inventory():
                await node.driver.destroy(vm.name)
            await node.driver.close()


def with_peers(network: HostNetwork, peers: list[str], guests: list[Guest]) -> HostNetwork:
    return HostNetwork(
        vnet=network.vnet, vni=network.vni, cidr=network.cidr, gateway=network.gateway,
        peers=peers, leases=[g.lease for g in guests],
    )  # fmt: skip


def links(node: Node) -> str:
    return in_netns(node.host.netns, "ip", "-o", "link").stdout


def ready_ip(driver: QemuDriver, name: str) -> str | None:
    found = re.findall(rb"STRATUS-READY vm=\S+ .* ip=(\S*)", read_serial(driver.files(name)))
    return found[-1].decode() if found else None


async def in_guest(driver: QemuDriver, name: str, command: str, timeout_s: float = 30) -> str:
    """Type ``command`` on the guest's serial console; its output (and exit status as the last
    line). Typed again only while nothing echoes it (the console's shell is not there yet)."""
    mark = f"done{next(_marks)}"
    pattern = re.compile(rf"{mark}-(\d+)".encode())
    start = driver.console_read(name, None, 0).end
    result: list[bytes] = []

    async def answered() -> bool:
        text = driver.console_read(name, start, 1 << 20).data
        if (found := pattern.search(text)) is not None:
            result.append(text[: found.end()])
            return True
        if mark.encode() not in text:
            await driver.console_write(name, f'{command}; echo "{mark}"-$?\n'.encode())
        return False

    await wait_until(answered, timeout_s=timeout_s, interval_s=0.5, message=f"{name}: {command}")
    return result[0].decode(errors="replace").replace("\r", "")


async def test_guests_of_a_network_reach_each_other_across_hosts_and_no_other_network(
    nodes: tuple[Node, Node],
) -> None:
    n1, n2 = nodes
    endpoint = HostEndpoint(vm=A1.name, vm_ip=A1.ip, vm_port=80, public_port=20080)
    await n1.networks.apply(
        ConfigureNetworks(
            networks=[with_peers(A, [n2.host.underlay_ip], [A1])], endpoints=[endpoint], digest="1"
        )
    )
    await n2.networks.apply(
        ConfigureNetworks(
            networks=[with_peers(A, [n1.host.underlay_ip], [A2]), with_peers(B, [], [B1])],
            digest="2",
        )
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(n1.driver.start(A1.spec(), 1))
        tg.create_task(n2.driver.start(A2.spec(), 1))
        tg.create_task(n2.driver.start(B1.spec(), 1))
    assert ready_ip(n1.driver, A1.name) == A1.ip, "DHCP before the readiness marker"
    assert ready_ip(n2.driver, A2.name) == A2.ip and ready_ip(n2.driver, B1.name) == B1.ip
    taps = in_netns(n1.host.netns, "ip", "-o", "link", "show", "master", "stbr4096").stdout
    assert tap_name(A1.name, 0) in taps

    # The endpoint on host 1 answers from the root namespace with a-1's own page.
    assert http_get(None, n1.host.outside, 20080) == "stratus-vm a-1"

    # a-2 (host 2) reaches a-1 (host 1) through the overlay: ICMP and TCP.
    out = await in_guest(n2.driver, A2.name, f"ping -c 2 -W 2 {A1.ip}")
    assert re.search(r"2 packets transmitted, [12] packets received", out), out
    out = await in_guest(n2.driver, A2.name, f"wget -q -O - http://{A1.ip}/")
    assert "stratus-vm a-1" in out, out

    # b-1 (host 2, network B) reaches neither a-2 beside it nor a-1, nor network A's gateway.
    for target in (A2.ip, A1.ip, A.gateway):
        out = await in_guest(n2.driver, B1.name, f"ping -c 1 -W 1 {target}")
        assert "1 packets transmitted, 0 packets received" in out, out
    out = await in_guest(n2.driver, B1.name, f"nc -w 2 {A2.ip} 80 </dev/null")
    assert "stratus-vm" not in out and re.search(r"-[1-9]\d*$", out.strip()), out
    out = await in_guest(n2.driver, B1.name, f"ping -c 1 -W 2 {B.gateway}")
    assert "1 packets received" in out, "its own gateway answers"

    # Taps go with their VM.
    await n1.driver.stop(A1.name)
    assert tap_name(A1.name, 0) not in in_netns(n1.host.netns, "ip", "-o", "link").stdout
    assert not any(vm.state is ObservedState.RUNNING for vm in n1.driver.inventory())


async def test_a_nic_needs_its_bridge_and_taps_follow_adoption(
    nodes: tuple[Node, Node], kit: Path, tmp_path: Path
) -> None:
    n1, _ = nodes
    await n1.networks.apply(ConfigureNetworks(networks=[with_peers(A, [], [A1, A2])], digest="1"))
    with pytest.raises(DriverError) as refused:
        await n1.driver.start(B1.spec(), 1)  # network B is not on host 1
    assert refused.value.retryable and "net-b" in str(refused.value)
    assert n1.driver.inventory() == [] and tap_name(B1.name, 0) not in links(n1)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(n1.driver.start(A1.spec(), 1))
        tg.create_task(n1.driver.start(A2.spec(), 1))
    in_netns(n1.host.netns, "ip", "tuntap", "add", "dev", "sttforeign0", "mode", "tap")
    pid = read_pid(n1.driver.files(A2.name))
    assert pid is not None
    await n1.driver.close()  # the agent stops (its VMs run on) and a-2's QEMU dies meanwhile
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not pid_alive(pid, n1.driver.root), message="a-2's qemu gone")

    n1.driver = make_driver(kit, n1.driver.root, n1.host.netns)
    assert await n1.driver.adopt() == [A1.name]
    present = links(n1)
    assert tap_name(A1.name, 0) in present, "the adopted VM keeps its tap"
    assert tap_name(A2.name, 0) not in present, "a tap of no VM is removed"
    assert "sttforeign0" in present, "a tap this driver did not make is not its business"
    assert http_get(n1.host.netns, A1.ip) == "stratus-vm a-1"
