"""The whole story with real parts: the scheduler, two qemu agents each in a network namespace of
its own (joined by a veth underlay), real QEMU guests in two virtual networks.

- ``a-1`` (host h1) and ``a-2`` (host h2) in network A reach each other across hosts by ICMP and
  TCP (the tiny guest's ``ping`` and ``wget`` typed on its console);
- ``b-1`` (host h2) in network B reaches neither, nor network A's gateway;
- an endpoint of ``a-1`` answers a TCP connection from the root namespace with its own page;
- after ``kill -9`` of h1's agent, ``a-1`` restarts on h2 with the same address and MAC, its
  endpoint moves there (the VM says where it answers now) and answers, and ``a-2`` reaches it.

Skipped without QEMU, root or the network tools; required in CI.
"""

from __future__ import annotations

import itertools
import re

import pytest

from cli.client import StratusClient
from common.messages import CreateVm, VmInfo, VmState
from common.network_messages import AddEndpoint, CreateVnet, NicRequest
from rigs.netqemu import NetRig
from tests.integration.helpers import wait_hosts_up
from tests.netkit import http_get
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(420)]

BOOT_S = 120.0
_marks = itertools.count()


async def running(client: StratusClient, name: str, **where: str) -> VmInfo:
    seen: list[VmInfo] = []

    async def up() -> bool:
        seen[:] = [await client.get_vm(name)]
        vm = seen[0]
        return vm.state is VmState.RUNNING and all(getattr(vm, k) == v for k, v in where.items())

    await wait_until(up, timeout_s=BOOT_S, interval_s=0.2, message=f"{name} running {where}")
    return seen[0]


async def in_guest(client: StratusClient, vm: VmInfo, command: str, timeout_s: float = 30) -> str:
    """Type ``command`` on the guest's console; its output, ending with ``doneN-<status>``."""
    host = vm.host
    assert host is not None
    mark = f"done{next(_marks)}"
    pattern = re.compile(rf"{mark}-(\d+)")
    found: list[str] = []

    async def answered() -> bool:
        reply = await client.console_tail(host, vm.name, 16 * 1024)
        text = reply.output.data.decode(errors="replace") if reply.output else ""
        if (match := pattern.search(text)) is not None:
            found.append(text[: match.end()].replace("\r", ""))
            return True
        if mark not in text:  # nothing echoed: the console's shell is not there yet
            await client.console_type(host, vm.name, f'{command}; echo "{mark}"-$?\n'.encode())
        return False

    await wait_until(answered, timeout_s=timeout_s, interval_s=0.5, message=f"{vm.name}: {command}")
    return found[0].rsplit(command, 1)[-1]


async def test_networks_across_hosts_isolation_endpoints_and_failover_with_the_same_address(
    net_rig: NetRig, net_api: StratusClient
) -> None:
    h1, h2 = net_rig.hosts["h1"], net_rig.hosts["h2"]
    net_rig.start_agent("h1")
    await wait_hosts_up(net_api, 1)
    await net_api.create_vnet(CreateVnet(name="net-a", cidr="10.214.0.0/24"))
    await net_api.create_vnet(CreateVnet(name="net-b", cidr="10.214.1.0/24"))
    await net_api.create_vm(CreateVm(name="a-1", size="Tiny", nics=[NicRequest(vnet="net-a")]))
    a1 = await running(net_api, "a-1", host="h1")
    net_rig.start_agent("h2")
    await wait_hosts_up(net_api, 2)
    await net_api.cordon_host("h1")
    for name, vnet in (("a-2", "net-a"), ("b-1", "net-b")):
        await net_api.create_vm(CreateVm(name=name, size="Tiny", nics=[NicRequest(vnet=vnet)]))
    a2, b1 = await running(net_api, "a-2", host="h2"), await running(net_api, "b-1", host="h2")
    await net_api.uncordon_host("h1")
    [a1_nic], [a2_nic], [b1_nic] = a1.nics, a2.nics, b1.nics

    # Across hosts in one network: ICMP and TCP.
    out = await in_guest(net_api, a2, f"ping -c 2 -W 2 {a1_nic.ip}")
    assert re.search(r"2 packets transmitted, [12] packets received", out), out
    assert "stratus-vm a-1" in await in_guest(net_api, a2, f"wget -q -O - http://{a1_nic.ip}/")

    # Network B reaches neither A guest nor A's gateway; its own gateway answers.
    for target in (a2_nic.ip, a1_nic.ip, a1_nic.gateway):
        out = await in_guest(net_api, b1, f"ping -c 1 -W 1 {target}")
        assert "1 packets transmitted, 0 packets received" in out, (target, out)
    assert "1 packets received" in await in_guest(net_api, b1, f"ping -c 1 -W 2 {b1_nic.gateway}")

    # An endpoint on h1 answers from the root namespace with a-1's own page.
    a1 = await net_api.add_endpoint(AddEndpoint(vm="a-1", vm_port=80))
    [endpoint] = a1.endpoints
    assert endpoint.public_port is not None and endpoint.address == h1.underlay_ip
    port = endpoint.public_port

    async def answers(host_address: str) -> bool:
        return http_get(None, host_address, port) == "stratus-vm a-1"

    await wait_until(lambda: answers(h1.outside), timeout_s=30, message="endpoint on h1")

    # kill -9 of h1's agent: a-1 restarts on h2 with the same address and MAC, and so does its
    # endpoint (it says where it answers now).
    net_rig.kill_agent("h1")
    moved = await running(net_api, "a-1", host="h2")
    assert [(n.ip, n.mac) for n in moved.nics] == [(a1_nic.ip, a1_nic.mac)]
    [endpoint] = moved.endpoints
    assert endpoint.address == h2.underlay_ip and endpoint.public_port is not None
    port = endpoint.public_port
    await wait_until(lambda: answers(h2.outside), timeout_s=60, message="endpoint on h2")
    assert "stratus-vm a-1" in await in_guest(net_api, a2, f"wget -q -O - http://{a1_nic.ip}/")
