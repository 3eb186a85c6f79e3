"""A cluster with real guest networks: qemu agents, each in a network namespace of its own (its
Linux network backend builds bridges, VXLAN, dnsmasq and nftables there, never in the root
namespace), nats-server and the scheduler in the root namespace on a hub address every namespace
reaches (rigs/chaos/netns.py). Two hosts are joined by a veth underlay of their own, whose ends
are their ``--underlay-ip``; three or more share an underlay segment (a bridge in a namespace of
its own); a single host uses its address towards the root namespace. Each host is in a fault
domain of its own (``fd-<host>``); its replica server listens on any free port.

Shared by the networks integration test and ``bench.netboot``. ``stop()`` takes everything down,
guests and DHCP servers included, also after a failure half-way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cli.qemukit import TINY_SIZE, stop_guests
from common import procs
from common.natsserver import NatsServer, start_nats_server
from hostagent.fenceguard import guard_pid
from hostagent.replicaserver import stop_replica_servers
from rigs.chaos.netns import Network

TIMINGS = {"heartbeat_interval_s": 0.2, "fence_after_s": 1.0, "dead_after_s": 3.0}
"""Short, but with room for QEMU boots loading the machine (dead_after_s >= fence_after_s + 1)."""


@dataclass
class NetHost:
    host: str
    netns: str
    outside: str
    """Its address as the root namespace reaches it (clients of its endpoints connect there)."""
    underlay_ip: str
    process: subprocess.Popen[bytes] | None = None


@dataclass
class NetRig:
    workdir: Path
    kit: Path
    network: Network = field(default_factory=Network)
    nats: NatsServer | None = None
    hub: str = ""
    """The address nats-server listens on (every namespace reaches it)."""
    scheduler: subprocess.Popen[bytes] | None = None
    hosts: dict[str, NetHost] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """VM sizes (cpu millicores, memory MiB) besides the tiny image's own."""
    scheduler_toml: str = ""
    """More of the scheduler's config (e.g. a ``[storage]`` table)."""

    @property
    def url(self) -> str:
        assert self.nats is not None
        return f"nats://{self.hub}:{self.nats.port}"

    @property
    def agents_dir(self) -> Path:
        return self.workdir / "agents"

    def start(self, hosts: list[str]) -> None:
        """nats-server and the scheduler, then a namespace per host (agents: ``start_agent``)."""
        self.hub = self.network.hub()
        # The later -a wins over start_nats_server's loopback one.
        self.nats = start_nats_server(self.workdir / "nats", extra_args=("-a", self.hub))
        self._start_scheduler()
        for host in hosts:
            netns = self.network.add_namespace(host)
            outside = self.network.pairs[-1].inner_addr
            self.hosts[host] = NetHost(host, netns, outside, outside)
        addresses = self.network.underlay([self.hosts[host].netns for host in hosts])
        for host, address in zip(hosts, addresses, strict=False):  # none for one host
            self.hosts[host].underlay_ip = address

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return procs.spawn(args, self.workdir / log_name, env=env)

    def _start_scheduler(self) -> None:
        name, cpu_milli, mem_mib = TINY_SIZE
        sizes = {name: (cpu_milli, mem_mib), **self.sizes}
        listed = ", ".join(
            f'{{ name = "{size}", cpu_milli = {cpu}, mem_mib = {mem} }}'
            for size, (cpu, mem) in sizes.items()
        )
        config = self.workdir / "scheduler.toml"
        config.write_text(
            f'sizes = [{listed}]\nbuiltin_images = {{ tiny = "{self.kit / "tiny.qcow2"}" }}\n'
            + self.scheduler_toml
        )
        t = TIMINGS
        args = [sys.executable, "-m", "scheduler", "--nats", self.url, "--config", str(config)]
        args += ["--db", str(self.workdir / "scheduler.db")]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        args += ["--fence-after", str(t["fence_after_s"]), "--dead-after", str(t["dead_after_s"])]
        self.scheduler = self._spawn([*args, "--log-level", "DEBUG"], "scheduler.log")

    def start_agent(self, host: str, *, boots: int = 2) -> None:
        node, t = self.hosts[host], TIMINGS
        args = ["ip", "netns", "exec", node.netns, sys.executable, "-m", "hostagent"]
        args += ["--nats", self.url, "--host-id", host, "--capacity", "4c/4g"]
        args += ["--fault-domain", f"fd-{host}", "--data-dir", str(self.agents_dir)]
        args += ["--driver", "qemu", "--boot-dir", str(self.kit), "--accel", "tcg"]
        args += ["--max-concurrent-boots", str(boots), "--underlay-ip", node.underlay_ip]
        args += ["--replica-port", "0"]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        args += ["--fence-after", str(t["fence_after_s"]), "--log-level", "DEBUG"]
        node.process = self._spawn(args, f"agent-{host}.log")

    def kill_agent(self, host: str) -> None:
        """``kill -9`` of the host's agent (its guests and fence guard live on)."""
        node = self.hosts[host]
        assert node.process is not None
        procs.kill(node.process, timeout_s=5)
        node.process = None

    def lose_host(self, host: str) -> None:
        """The host is gone: ``kill -9`` of its agent, fence guard, guests and replica server,
        then its data directory (disks and replicas) removed."""
        self.kill_agent(host)
        pid = guard_pid(self.agents_dir, host)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid_file in (self.agents_dir / host).glob("qemu/vms/*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                name = f"guest=stratus-{pid_file.parent.name}\0".encode()
                if name in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        stop_replica_servers(self.agents_dir, host)
        shutil.rmtree(self.agents_dir / host)

    def stop(self) -> None:
        """Every process, then every guest, fence guard and DHCP server, then the namespaces."""
        running = [n.process for n in self.hosts.values() if n.process is not None]
        procs.stop_all([*running, *([self.scheduler] if self.scheduler else [])], 5)
        stop_guests(self.agents_dir)
        stop_replica_servers(self.agents_dir)
        for host in self.hosts:
            pid = guard_pid(self.agents_dir, host)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid_file in self.agents_dir.glob("*/network/dnsmasq-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if os.fsencode(self.agents_dir) in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        if self.nats is not None:
            self.nats.stop()
        self.network.close()
