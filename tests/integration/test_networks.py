"""Virtual networks end to end on the fake driver: a real nats-server, the scheduler and agent
processes (the simulated network backend). VMs get addresses; kill -9 of an agent re-places its
VM with the same address and MAC and moves its endpoint, and the surviving host applies the
configuration it is sent (its heartbeats report the digest); a full network leaves a VM pending
``no_address`` until an address is released; bad input gets typed errors over NATS, the jobs
stream, HTTP and the CLI, and changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from cli.client import StratusClient
from common import codec, subjects
from common.config import SchedulerConfig
from common.errors import ApiError
from common.messages import CreateVm, JobRejected, VmEvent, VmState
from common.natsserver import NatsServer
from common.netconfig import NetConfig
from common.network_messages import (
    AddEndpoint,
    ConfigureNetworks,
    CreateVnet,
    NicRequest,
    UpdateNetworks,
)
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.shell.app import SchedulerApp
from tests.integration.helpers import run_stratus, wait_all_running, wait_hosts_up
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

UNDERLAY = {"h1": "127.0.0.11", "h2": "127.0.0.12"}
"""Addresses the agents report as theirs (nothing is sent to them: the backend is simulated)."""


@dataclass
class Wire:
    """What crosses the bus to and from the agents, read by the test itself."""

    held: dict[str, NetConfig] = field(default_factory=dict)
    """The network configuration each host is sent, as it stands after the last whole one and
    the updates on it (an update on another configuration changes nothing, as on the host)."""
    reported: dict[str, str] = field(default_factory=dict)
    """The network digest each host last reported applied."""
    events: list[VmEvent] = field(default_factory=list)

    async def attach(self, nc: Client) -> None:
        async def on_commands(msg: Msg) -> None:
            batch = codec.host_commands.decode(msg.data)
            for command in batch.commands:
                if isinstance(command, ConfigureNetworks):
                    self.held[batch.host_id] = NetConfig.of(command)
                elif isinstance(command, UpdateNetworks):
                    config = self.held.setdefault(batch.host_id, NetConfig())
                    if config.problem(command) is None:
                        config.apply(command)

        async def on_heartbeat(msg: Msg) -> None:
            heartbeat = codec.heartbeat.decode(msg.data)
            self.reported[heartbeat.host_id] = heartbeat.network_digest

        async def on_event(msg: Msg) -> None:
            event = codec.event.decode(msg.data)
            if isinstance(event, VmEvent):
                self.events.append(event)

        await nc.subscribe(f"{subjects.ROOT}.host.*.cmd", cb=on_commands)
        await nc.subscribe(subjects.HEARTBEAT_WILDCARD, cb=on_heartbeat)
        await nc.subscribe(subjects.vm_event("*"), cb=on_event)
        await nc.flush()

    def config(self, host: str) -> ConfigureNetworks:
        return self.held.get(host, NetConfig()).whole()

    def applied(self, host: str) -> bool:
        config = self.held.get(host)
        return config is not None and self.reported.get(host) == config.digest


def start_two_hosts(cluster: Cluster) -> None:
    cluster.start_scheduler()
    for i, (host, address) in enumerate(UNDERLAY.items()):
        cluster.start_agent(host, fault_domain=f"fd-{i}", extra=("--underlay-ip", address))


def leases(config: ConfigureNetworks) -> dict[str, tuple[str, str]]:
    return {lease.vm: (lease.ip, lease.mac) for n in config.networks for lease in n.leases}


async def test_a_vm_keeps_its_address_mac_and_endpoint_when_its_host_is_killed(
    cluster: Cluster, client: StratusClient, nc: Client
) -> None:
    wire = Wire()
    await wire.attach(nc)
    start_two_hosts(cluster)
    await wait_hosts_up(client, 2)
    vnet = await client.create_vnet(CreateVnet(name="front", cidr="10.1.0.0/24"))
    assert (vnet.vni, vnet.gateway) == (4096, "10.1.0.1")
    for name in ("web-1", "web-2"):
        await client.create_vm(CreateVm(name=name, size="Large", nics=[NicRequest(vnet="front")]))
    await wait_all_running(client, ["web-1", "web-2"])
    before = await client.get_vm("web-1")
    [nic] = before.nics
    assert nic.ip in ("10.1.0.2", "10.1.0.3") and nic.mac.startswith("52:54:00:")
    home = before.host
    assert home in UNDERLAY
    other = "h2" if home == "h1" else "h1"
    added = await client.add_endpoint(AddEndpoint(vm="web-1", vm_port=22, public_port=8022))
    [endpoint] = added.endpoints
    assert (endpoint.address, endpoint.public_port) == (UNDERLAY[home], 8022)
    await wait_until(lambda: wire.applied(home), timeout_s=10, message="home applied its config")
    assert leases(wire.config(home))["web-1"] == (nic.ip, nic.mac)
    assert [e.public_port for e in wire.config(home).endpoints] == [8022]

    cluster.kill_agent(home)  # kill -9

    async def moved() -> bool:
        vm = await client.get_vm("web-1")
        return vm.state is VmState.RUNNING and vm.host == other

    await wait_until(moved, timeout_s=20, message="web-1 running on the other host")
    after = await client.get_vm("web-1")
    assert after.nics == before.nics, "the same address and MAC after the move"
    [endpoint] = after.endpoints
    assert (endpoint.address, endpoint.public_port) == (UNDERLAY[other], 8022)
    await wait_until(lambda: wire.applied(other), timeout_s=10, message="survivor applied")
    config = wire.config(other)
    assert leases(config)["web-1"] == (nic.ip, nic.mac)
    assert config.networks[0].peers == []  # the dead host carries nothing any more
    assert [(e.vm, e.public_port) for e in config.endpoints] == [("web-1", 8022)]
    running_there = [e for e in wire.events if e.name == "web-1" and e.host == other]
    assert running_there and running_there[-1].endpoints[0].address == UNDERLAY[other]
    assert running_there[-1].nics[0].ip == nic.ip


async def test_a_full_network_leaves_a_vm_pending_until_an_address_is_released(
    cluster: Cluster, client: StratusClient
) -> None:
    start_two_hosts(cluster)
    await wait_hosts_up(client, 2)
    await client.create_vnet(CreateVnet(name="tiny", cidr="10.3.0.0/29"))
    names = [f"vm-{i}" for i in range(5)]
    for name in names:
        await client.create_vm(
            CreateVm(name=name, size="ExtraSmall", nics=[NicRequest(vnet="tiny")])
        )
    late = await client.create_vm(
        CreateVm(name="late", size="ExtraSmall", nics=[NicRequest(vnet="tiny")])
    )
    assert late.state is VmState.PENDING and late.reason.startswith("no_address")
    await wait_all_running(client, names)
    assert (await client.get_vm("late")).state is VmState.PENDING
    freed = (await client.get_vm("vm-2")).nics[0].ip
    await client.delete_vm("vm-2")
    running = await wait_all_running(client, ["late"])
    assert running["late"].nics[0].ip == freed


async def test_bad_network_requests_get_typed_errors_over_nats_and_jobs_and_change_nothing(
    cluster: Cluster, client: StratusClient, nc: Client
) -> None:
    rejected: list[JobRejected] = []

    async def on_rejected(msg: Msg) -> None:
        event = codec.event.decode(msg.data)
        if isinstance(event, JobRejected):
            rejected.append(event)

    await nc.subscribe(subjects.JOB_REJECTED, cb=on_rejected)
    cluster.start_scheduler()
    cluster.start_agent("h1", extra=("--underlay-ip", UNDERLAY["h1"]))
    await wait_hosts_up(client, 1)
    await client.create_vnet(CreateVnet(name="front", cidr="10.1.0.0/24"))
    await client.create_vm(
        CreateVm(name="a", size="Small", nics=[NicRequest(vnet="front", ip="10.1.0.10")])
    )
    await wait_all_running(client, ["a"])  # the snapshot must not race its own start
    before = ([v.addresses_used for v in await client.list_vnets()], await client.list_vms())
    refusals = [
        (client.create_vnet(CreateVnet(name="back", cidr="10.1.0.128/25")), "invalid_network"),
        (client.create_vnet(CreateVnet(name="huge", cidr="10.0.0.0/8")), "invalid_network"),
        (client.create_vm(_on("b", "front", "10.1.0.10")), "address_in_use"),
        (client.create_vm(_on("b", "front", "10.1.1.10")), "invalid_network"),
        (client.create_vm(_on("b", "nowhere")), "not_found"),
        (client.delete_vnet("front"), "network_in_use"),
    ]
    for call, code in refusals:
        with pytest.raises(ApiError) as exc:
            await call
        assert exc.value.code == code, exc.value
    assert (
        [v.addresses_used for v in await client.list_vnets()],
        await client.list_vms(),
    ) == before
    # The jobs stream applies network operations, and rejects a bad one with its code.
    await client.submit_job(subjects.VNET_CREATE, CreateVnet(name="back", cidr="10.2.0.0/24"), "j1")
    await client.submit_job(subjects.VNET_CREATE, CreateVnet(name="bad", cidr="10.2.0.0/25"), "j2")

    async def settled() -> bool:
        names = {v.name for v in await client.list_vnets()}
        return "back" in names and any(r.request_id == "j2" for r in rejected)

    await wait_until(settled, timeout_s=10, message="jobs handled")
    [bad] = [r for r in rejected if r.request_id == "j2"]
    assert bad.code == "invalid_network"
    assert "bad" not in {v.name for v in await client.list_vnets()}


def _on(name: str, vnet: str, ip: str | None = None) -> CreateVm:
    return CreateVm(name=name, size="Small", nics=[NicRequest(vnet=vnet, ip=ip)])


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
async def http(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    config = msgspec.convert(
        {
            "nats_url": nats_server.url,
            "db_path": str(tmp_path / "scheduler.db"),
            "http_listen": "127.0.0.1:0",
            **FAST_TIMINGS,
        },
        SchedulerConfig,
    )
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
            yield session
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    async with http.request(method, path, data=data, headers=headers) as response:
        return response.status, await response.json()


async def test_networks_over_http_with_typed_errors(
    http: aiohttp.ClientSession, cluster: Cluster
) -> None:
    cluster.start_agent("h1", extra=("--underlay-ip", UNDERLAY["h1"]))
    status, body = await call(http, "POST", "/v1/vnets", {"name": "front", "cidr": "10.1.0.0/24"})
    assert status == 201 and body["vnet"]["vni"] == 4096
    for method, path, payload, code, error in [
        ("POST", "/v1/vnets", {"name": "back", "cidr": "10.1.0.0/25"}, 422, "invalid_network"),
        ("POST", "/v1/vnets", {"name": "front", "cidr": "10.9.0.0/24"}, 409, "conflict"),
        ("GET", "/v1/vnets/nowhere", None, 404, "not_found"),
    ]:
        status, body = await call(http, method, path, payload)
        assert (status, body["error"]["code"]) == (code, error), (path, body)

    async def placed() -> bool:
        status, body = await call(
            http, "POST", "/v1/vms",
            {"name": "web-1", "size": "Small", "nics": [{"vnet": "front", "ip": "10.1.0.7"}]},
        )  # fmt: skip
        return bool(status == 201 and body["vm"]["state"] != "pending")

    await wait_until(placed, timeout_s=15, message="web-1 placed on h1")
    status, body = await call(
        http,
        "POST",
        "/v1/vms",
        {"name": "web-2", "size": "Small", "nics": [{"vnet": "front", "ip": "10.1.0.7"}]},
    )
    assert (status, body["error"]["code"]) == (409, "address_in_use")
    status, body = await call(http, "POST", "/v1/vms/web-1/endpoints", {"vm_port": 22})
    assert status == 200, body
    [endpoint] = body["vm"]["endpoints"]
    assert (endpoint["address"], endpoint["public_port"]) == (UNDERLAY["h1"], 20000)
    status, body = await call(http, "DELETE", "/v1/vnets/front")
    assert (status, body["error"]["code"]) == (409, "network_in_use")
    status, body = await call(http, "DELETE", "/v1/vms/web-1/endpoints/22?protocol=tcp")
    assert status == 200 and body["vm"]["endpoints"] == []
    status, body = await call(http, "GET", "/v1/vnets")
    assert status == 200 and [(v["name"], v["addresses_used"]) for v in body["vnets"]] == [
        ("front", 1)
    ]


# --------------------------------------------------------------------------- the CLI


async def test_the_cli_creates_a_network_a_vm_in_it_and_an_endpoint(
    cluster: Cluster, client: StratusClient
) -> None:
    cluster.start_scheduler()
    cluster.start_agent("h1", extra=("--underlay-ip", UNDERLAY["h1"]))
    await wait_hosts_up(client, 1)

    async def stratus(*argv: str) -> tuple[int, str, str]:
        run = await run_stratus(cluster.nats.url, *argv)
        return run.status, run.out, run.err

    status, out, err = await stratus("vnet", "create", "front", "--cidr", "10.1.0.0/24")
    assert status == 0 and "front" in out and "gateway 10.1.0.1" in err, err
    status, _, err = await stratus("vnet", "create", "back", "--cidr", "10.1.0.0/16")
    assert status == 1 and err.startswith("error: invalid_network:"), err
    status, _, err = await stratus(
        "vm", "create", "web-1", "--size", "Small", "--vnet", "front", "--ip", "10.1.0.9",
        "--wait",
    )  # fmt: skip
    assert status == 0, err
    status, out, _ = await stratus("vm", "list")
    assert "front/10.1.0.9" in out
    status, out, err = await stratus("vm", "endpoint", "add", "web-1", "--port", "8022:22")
    assert status == 0 and f"answers at {UNDERLAY['h1']}:8022/tcp" in err, err
    status, out, _ = await stratus("vm", "show", "web-1")
    assert f"{UNDERLAY['h1']}:8022/tcp -> port 22" in out
    status, out, _ = await stratus("vnet", "list", "-o", "json")
    assert [(v["name"], v["addresses_used"]) for v in json.loads(out)] == [("front", 1)]
