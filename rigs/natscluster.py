"""A 3-node NATS cluster (JetStream, R3-capable) on loopback random ports, for tests and bench.

Each node can be killed, restarted on its own port and store, frozen (SIGSTOP) and thawed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client

from common.natsserver import NatsServer, start_nats_server
from common.waiting import wait_until

NODES = 3


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Node:
    name: str
    client_port: int
    route_port: int
    http_port: int
    store_dir: Path
    server: NatsServer | None = None
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class NatsCluster:
    workdir: Path
    nodes: list[Node] = field(default_factory=list)

    @classmethod
    def create(cls, workdir: Path) -> NatsCluster:
        ports = free_ports(3 * NODES)
        cluster = cls(workdir)
        for i in range(NODES):
            cluster.nodes.append(
                Node(
                    f"n{i + 1}",
                    ports[i],
                    ports[NODES + i],
                    ports[2 * NODES + i],
                    workdir / f"n{i + 1}",
                )
            )
        return cluster

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All nodes, comma-separated (the scheduler's and the agents' ``--nats``)."""
        return ",".join(self.urls)

    def start(self) -> None:
        for node in self.nodes:
            self.start_node(node)

    def start_node(self, node: Node) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.route_port}" for n in self.nodes)
        extra = (
            "--name",
            node.name,
            "--cluster_name",
            "stratus-test",
            "--cluster",
            f"nats://127.0.0.1:{node.route_port}",
            "--routes",
            routes,
            "-m",
            str(node.http_port),
        )
        node.server = start_nats_server(node.store_dir, port=node.client_port, extra_args=extra)

    def kill_node(self, node: Node) -> None:
        assert node.server is not None
        node.server.process.send_signal(signal.SIGKILL)
        node.server.process.wait(timeout=10)
        node.server = None

    def freeze(self, node: Node) -> None:
        assert node.server is not None
        node.server.process.send_signal(signal.SIGSTOP)
        node.frozen = True

    def thaw(self, node: Node) -> None:
        assert node.server is not None
        node.server.process.send_signal(signal.SIGCONT)
        node.frozen = False

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's name, from any live node's /jsz (None: none yet)."""
        for node in self.nodes:
            if node.server is None or node.frozen:
                continue
            try:
                url = f"http://127.0.0.1:{node.http_port}/jsz"
                with urllib.request.urlopen(url, timeout=0.5) as response:
                    info = json.loads(response.read())
            except OSError:
                continue
            leader = (info.get("meta_cluster") or {}).get("leader")
            if leader:
                return str(leader)
        return None

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        async def elected() -> bool:
            return await asyncio.to_thread(self.meta_leader) is not None

        await wait_until(
            elected, timeout_s=timeout_s, interval_s=0.02, message="a JetStream meta leader"
        )

    async def connect(self) -> Client:
        return await nats.connect(
            self.urls, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.1
        )

    def stop(self) -> None:
        for node in self.nodes:
            if node.server is not None:
                if node.frozen:
                    node.server.process.send_signal(signal.SIGCONT)
                node.server.stop()
                node.server = None
