"""The replica server of a real agent (qemu driver) in a network namespace of its own: it serves
the replicas ``ConfigureReplicas`` names over NBD on its underlay address, deletes those the
next set leaves out, keeps serving across an agent restart (kill -9), and applies an
``UpdateReplicas`` on the set it holds (and ignores one on another)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from common.natsserver import NatsServer, start_nats_server
from common.replica_messages import (
    ConfigureReplicas,
    ReplicaRef,
    ReplicaSpec,
    ReplicaState,
    UpdateReplicas,
)
from common.replicaset import ReplicaSet
from rigs.chaos.netns import Network, unavailable_reason
from tests.conftest import _require_nats
from tests.integration.test_agent import FakeScheduler
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Host:
    host_id: str
    netns: str
    address: str
    """Its underlay address (the other host reaches it there)."""
    url: str
    data_dir: Path
    kit: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> None:
        args = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "hostagent"]
        args += ["--nats", self.url, "--host-id", self.host_id, "--capacity", "4c/4g"]
        args += ["--data-dir", str(self.data_dir), "--driver", "qemu", "--accel", "tcg"]
        args += ["--boot-dir", str(self.kit), "--underlay-ip", self.address]
        args += ["--replica-port", "0", "--disk-capacity", "20g"]
        args += ["--heartbeat-interval", "0.2", "--fence-after", "0.8", "--log-level", "DEBUG"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=log)

    def kill_agent(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    @property
    def replicas_dir(self) -> Path:
        return self.data_dir / self.host_id / "replicas"

    def daemon_pid(self) -> int:
        return int((self.replicas_dir / "daemon.pid").read_text())

    def io(self, url: str, command: str) -> subprocess.CompletedProcess[str]:
        """``qemu-io`` on an NBD export, from this host's namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, "qemu-io", "-f", "raw", "-c", command, url],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    def reads(self, url: str, pattern: str) -> bool:
        result = self.io(url, f"read -P {pattern} 0 64k")
        return result.returncode == 0 and "verification failed" not in result.stdout


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    """Two hosts, each in its own namespace, joined by an underlay of their own."""
    _require_nats()
    if (why := unavailable_reason()) is not None:
        pytest.fail(why)
    kit = boot_kit()
    network = Network()
    server: NatsServer | None = None
    made: list[Host] = []
    try:
        hub = network.hub()
        server = start_nats_server(tmp_path / "nats", extra_args=("-a", hub))
        url = f"nats://{hub}:{server.port}"
        spaces = [network.add_namespace(label) for label in ("a", "b")]
        addresses = network.join(*spaces)
        for index, (netns, address) in enumerate(zip(spaces, addresses, strict=True)):
            host_id = f"h{index + 1}"
            made.append(Host(host_id, netns, address, url, tmp_path / "agents", kit,
                             tmp_path / f"agent-{host_id}.log"))  # fmt: skip
        yield made[0], made[1]
    finally:
        for node in made:
            node.kill_agent()
            with contextlib.suppress(OSError, ValueError):
                os.kill(node.daemon_pid(), signal.SIGKILL)
        if server is not None:
            server.stop()
        network.close()


async def _scheduler(url: str, host_id: str) -> tuple[Client, FakeScheduler]:
    nc: Client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    fake = FakeScheduler(nc, host_id)
    await fake.start()
    return nc, fake


async def _applied(scheduler: FakeScheduler, digest: str, timeout_s: float = 15) -> None:
    """Until the host reports ``digest`` applied and every replica of it ready."""
    await wait_until(
        lambda: (
            scheduler.last is not None
            and scheduler.last.replica_digest == digest
            and not scheduler.last.replicas
        ),
        timeout_s=timeout_s,
        message=f"replica set {digest} applied and ready",
    )


async def test_replicas_are_served_deleted_and_outlive_an_agent_restart(
    hosts: tuple[Host, Host],
) -> None:
    host, _ = hosts
    nc, scheduler = await _scheduler(host.url, host.host_id)
    try:
        host.start_agent()
        await scheduler.wait_acked()
        first = scheduler.heartbeats[0]
        assert first.replica_port > 0 and first.disk_capacity_mib == 20 * 1024

        data = ReplicaSpec(disk_id="vm-1-data-1", vm="vm-1", kind="data", size_mib=64)
        await scheduler.send(
            ConfigureReplicas(replicas=[data], digest="set-1"), host_id=host.host_id
        )
        await _applied(scheduler, "set-1")
        port = scheduler.heartbeats[-1].replica_port
        url = f"nbd://{host.address}:{port}/vm-1-data-1"
        assert host.io(url, "write -P 0x5a 0 64k").returncode == 0
        assert host.reads(url, "0x5a")

        # kill -9 of the agent: the daemon and its export live on; the next agent adopts them
        daemon = host.daemon_pid()
        host.kill_agent()
        assert host.reads(url, "0x5a")
        host.start_agent()
        await wait_until(
            lambda: scheduler.last is not None and scheduler.last.boot_id != first.boot_id,
            timeout_s=20,
            message="the restarted agent's heartbeat",
        )
        await scheduler.wait_acked()
        restarted = scheduler.heartbeats[-1]
        assert restarted.replica_port == port and host.daemon_pid() == daemon
        assert host.reads(url, "0x5a")

        # a set without it: no longer served, its file gone
        await scheduler.send(ConfigureReplicas(replicas=[], digest="set-2"), host_id=host.host_id)
        await _applied(scheduler, "set-2")
        assert host.io(url, "read 0 4k").returncode != 0
        assert not (host.replicas_dir / "vm-1-data-1.qcow2").exists()

        # named again as made before (as to a host back without its disks): lost, not made
        again = ConfigureReplicas(replicas=[data], digest="set-3", existing=["vm-1-data-1"])
        await scheduler.send(again, host_id=host.host_id)
        await wait_until(
            lambda: scheduler.last is not None and scheduler.last.replica_digest == "set-3",
            timeout_s=15,
            message="set-3 applied",
        )
        assert [(r.disk_id, r.state) for r in scheduler.heartbeats[-1].replicas] == [
            ("vm-1-data-1", ReplicaState.LOST)
        ]
        assert host.io(url, "read 0 4k").returncode != 0
        assert not (host.replicas_dir / "vm-1-data-1.qcow2").exists()
    finally:
        await nc.close()


async def test_a_copy_is_filled_from_another_hosts_replica(hosts: tuple[Host, Host]) -> None:
    first, second = hosts
    nc1, one = await _scheduler(first.url, first.host_id)
    nc2, two = await _scheduler(second.url, second.host_id)
    try:
        first.start_agent()
        second.start_agent()
        await one.wait_acked()
        await two.wait_acked()
        data = ReplicaSpec(disk_id="vm-1-data-1", vm="vm-1", kind="data", size_mib=64)
        await one.send(ConfigureReplicas(replicas=[data], digest="one"), host_id=first.host_id)
        await _applied(one, "one")
        port = one.heartbeats[-1].replica_port
        assert (
            first.io(f"nbd://{first.address}:{port}/vm-1-data-1", "write -P 0x3c 0 64k").returncode
            == 0
        )

        source = ReplicaRef(host=first.host_id, address=first.address, port=port)
        copy = msgspec.structs.replace(data, fill_from=source, fill_mib_s=16)
        unreachable = ReplicaRef(host="h9", address=first.address, port=1)
        lost = ReplicaSpec(
            disk_id="vm-9-data-1", vm="vm-9", kind="data", size_mib=64, fill_from=unreachable
        )
        await two.send(
            ConfigureReplicas(replicas=[copy, lost], digest="two"), host_id=second.host_id
        )
        await wait_until(
            lambda: (
                two.last is not None
                and any(
                    s.state is ReplicaState.FILLING and s.disk_id == "vm-1-data-1"
                    for s in two.last.replicas
                )
            ),
            timeout_s=10,
            message="the copy reported filling",
        )
        await wait_until(
            lambda: (
                two.last is not None
                and [(s.disk_id, s.state) for s in two.last.replicas]
                == [("vm-9-data-1", ReplicaState.FAILED)]
            ),
            timeout_s=20,
            message="the copy made, the one from an unreachable source failed",
        )
        failed = two.heartbeats[-1].replicas[0]
        assert failed.retryable and failed.reason
        copy_url = f"nbd://{second.address}:{two.heartbeats[-1].replica_port}/vm-1-data-1"
        assert first.reads(copy_url, "0x3c"), "the copy holds what the source held"
    finally:
        await nc1.close()
        await nc2.close()


async def test_an_update_is_applied_on_the_set_held_and_ignored_on_another(
    hosts: tuple[Host, Host],
) -> None:
    host, _ = hosts
    nc, scheduler = await _scheduler(host.url, host.host_id)
    try:
        host.start_agent()
        await scheduler.wait_acked()
        one = ReplicaSpec(disk_id="vm-1-data-1", vm="vm-1", kind="data", size_mib=64)
        two = ReplicaSpec(disk_id="vm-2-data-1", vm="vm-2", kind="data", size_mib=64)
        held = ReplicaSet()
        held.put(one)
        await scheduler.send(held.whole(), host_id=host.host_id)
        await _applied(scheduler, held.digest)
        port = scheduler.heartbeats[-1].replica_port
        url_one = f"nbd://{host.address}:{port}/vm-1-data-1"
        url_two = f"nbd://{host.address}:{port}/vm-2-data-1"
        assert host.io(url_one, "write -P 0x11 0 64k").returncode == 0

        # on another base (as after a lost update): ignored, the digest held still reported
        elsewhere = UpdateReplicas(base="00000000000000aa", digest="00000000000000bb", added=[two])
        await scheduler.send(elsewhere, host_id=host.host_id)
        seen = len(scheduler.heartbeats)
        await scheduler.wait_for_heartbeat_after(seen + 2, timeout_s=5)
        assert scheduler.heartbeats[-1].replica_digest == held.digest
        assert host.io(url_two, "read 0 4k").returncode != 0

        # on the set held: the new one made and served, the one removed deleted
        base = held.digest
        held.put(two)
        held.drop("vm-1-data-1")
        update = UpdateReplicas(base=base, digest=held.digest, added=[two], removed=[one.disk_id])
        await scheduler.send(update, host_id=host.host_id)
        await _applied(scheduler, held.digest)
        assert host.io(url_two, "write -P 0x22 0 64k").returncode == 0
        assert host.reads(url_two, "0x22")
        assert host.io(url_one, "read 0 4k").returncode != 0
        assert not (host.replicas_dir / "vm-1-data-1.qcow2").exists()
    finally:
        await nc.close()
