"""The chaos cluster: nats-server (JetStream on disk), two schedulers (a leader and a standby,
each on its own store, as ``stratus up --schedulers 2`` runs them) and agents as processes.

Each agent runs inside its own network namespace (rigs/chaos/netns.py); nats-server listens on
the hub address every namespace reaches, and restarts on the same port with the same store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli.qemukit import stop_guests
from common.natsserver import NatsServer, start_nats_server
from hostagent.fenceguard import guard_pid
from hostagent.replicaserver import stop_replica_servers
from rigs.chaos import disks
from rigs.chaos.netns import Network

TIMINGS = {"heartbeat_interval_s": 0.2, "fence_after_s": 0.8, "dead_after_s": 1.8}
"""The integration tests' fast knobs (dead_after_s >= fence_after_s + 1)."""
LEASE_S = 2.0
"""The leader lease: a takeover after a leader's kill or long stop takes about this long."""
SCHEDULERS = ("s1", "s2")
HOST_CAPACITY = "8c/16g"
CPU_MILLI = 8000
MEM_MIB = 16 * 1024


TINY = "Tiny"
"""The QEMU part's size: the tiny guest image (deploy/images) in 96 MiB."""


@dataclass(frozen=True)
class QemuSetup:
    """The QEMU part of the campaign: real guests (TCG) on agents whose data dir is a small
    tmpfs (a disk a fault can fill)."""

    kit: Path
    """The boot kit (tests/qemukit.py): kernel, initramfs, tiny.qcow2."""
    disk_mib: int = 48
    capacity: str = "4c/2g"

    def scheduler_args(self, workdir: Path) -> list[str]:
        config = workdir / "scheduler.toml"
        config.write_text(
            f'sizes = [{{ name = "{TINY}", cpu_milli = 1000, mem_mib = 96 }}]\n'
            f'builtin_images = {{ tiny = "{self.kit / "tiny.qcow2"}" }}\n'
        )
        return ["--config", str(config), "--scorer", "spread"]

    def agent_args(self) -> list[str]:
        args = ["--driver", "qemu", "--boot-dir", str(self.kit), "--accel", "tcg"]
        return [*args, "--max-concurrent-boots", "1"]


@dataclass
class Agent:
    host: str
    netns: str
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    """SIGSTOPped right now."""
    started_s: float = 0.0
    """Monotonic seconds when this agent process was started."""
    underlay_ip: str = ""
    """QEMU part: its address on the hosts' own link (its replicas are served there)."""


@dataclass
class Rig:
    workdir: Path
    network: Network
    hosts: int = 4
    qemu: QemuSetup | None = None
    """Set: agents run the QEMU driver, each on a tmpfs data disk."""
    nats: NatsServer | None = None
    hub: str = ""
    port: int = -1
    schedulers: dict[str, subprocess.Popen[bytes] | None] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    """The schedulers (and ``nats``) SIGSTOPped right now."""
    agents: dict[str, Agent] = field(default_factory=dict)
    started_s: dict[str, float] = field(default_factory=dict)
    """Monotonic seconds when nats-server and each scheduler were last started."""
    calm_from_s: dict[str | None, float] = field(default_factory=dict)
    """Per host (None: the control plane), from when its last fault can no longer keep its
    heartbeats from the leader: the fault's end plus its length again (TCP's retransmission
    backoff after an outage grows with the outage)."""

    @property
    def url(self) -> str:
        return f"nats://{self.hub}:{self.port}"

    @property
    def agents_dir(self) -> Path:
        return self.workdir / "agents"

    def start(self) -> None:
        self.hub = self.network.hub()
        self.start_nats()
        for name in SCHEDULERS:
            self.start_scheduler(name)
        for i in range(1, self.hosts + 1):
            host = f"h{i}"
            self.agents[host] = Agent(host, self.network.add_namespace(host))
        if self.qemu is not None:
            self._underlay()
        for host in self.agents:
            if self.qemu is not None:
                disks.mount(self.host_dir(host), self.qemu.disk_mib)
            self.start_agent(host)

    def _underlay(self) -> None:
        """Join the hosts by links of their own (``Network.underlay``), their
        ``--underlay-ip``: a copy of a disk is filled and served across it, as between separate
        machines. Without it each agent's replica server was at 127.0.0.1 of its own namespace,
        so one host could not reach another's copies (a guest restarted on the other host
        failed: "Requested export not available")."""
        agents = list(self.agents.values())
        addresses = self.network.underlay([agent.netns for agent in agents])
        for agent, address in zip(agents, addresses, strict=False):  # none for one host
            agent.underlay_ip = address

    def host_dir(self, host: str) -> Path:
        """An agent's own directory in the data dir (its disk, with the QEMU driver)."""
        return self.agents_dir / host

    def fill_disk(self, host: str) -> int:
        assert self.qemu is not None, "only QEMU agents have a disk of their own"
        return disks.fill(self.host_dir(host))

    def free_disk(self, host: str) -> None:
        disks.free(self.host_dir(host))

    # ------------------------------------------------------------------ processes

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with (self.workdir / log_name).open("ab") as log:
            return subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            )

    def start_nats(self) -> None:
        extra = ("-a", self.hub)  # the later -a wins over start_nats_server's loopback one
        self.nats = start_nats_server(self.workdir / "nats", port=self.port, extra_args=extra)
        self.port = self.nats.port
        self.started_s["nats"] = time.monotonic()

    def kill_nats(self, sig: signal.Signals = signal.SIGKILL) -> None:
        assert self.nats is not None
        self.nats.process.send_signal(sig)
        self.nats.process.wait(timeout=15)

    def signal_nats(self, sig: signal.Signals) -> None:
        """SIGSTOP or SIGCONT nats-server (frozen: connections stay open, nothing answers)."""
        assert self.nats is not None
        self.nats.process.send_signal(sig)
        self._mark_stopped("nats", sig)

    @property
    def scheduler_names(self) -> list[str]:
        return list(SCHEDULERS)

    def _scheduler_args(self, db: Path) -> list[str]:
        t = TIMINGS
        args = [sys.executable, "-m", "scheduler", "--nats", self.url, "--db", str(db)]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        args += ["--fence-after", str(t["fence_after_s"]), "--dead-after", str(t["dead_after_s"])]
        if self.qemu is not None:
            args += self.qemu.scheduler_args(self.workdir)
        return [*args, "--lease", str(LEASE_S), "--log-level", "DEBUG"]

    def scheduler_db(self, name: str) -> Path:
        return self.workdir / f"{name}.db"

    def start_scheduler(self, name: str) -> None:
        """Start scheduler ``name`` on its own store (a standby until it wins the lease)."""
        args = self._scheduler_args(self.scheduler_db(name))
        self.schedulers[name] = self._spawn(args, f"{name}.log")
        self.started_s[name] = time.monotonic()

    def kill_scheduler(self, name: str) -> None:
        process = self.schedulers.get(name)
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=15)
        self.schedulers[name] = None
        self.stopped.discard(name)

    def signal_scheduler(self, name: str, sig: signal.Signals) -> None:
        process = self.schedulers.get(name)
        assert process is not None
        process.send_signal(sig)
        self._mark_stopped(name, sig)

    def _mark_stopped(self, name: str, sig: signal.Signals) -> None:
        if sig is signal.SIGSTOP:
            self.stopped.add(name)
        elif sig is signal.SIGCONT:
            self.stopped.discard(name)

    def node_of(self, name: str) -> str | None:
        """The node id a scheduler's store carries (the lease names it), once it has one."""
        path = Path(f"{self.scheduler_db(name)}.node")
        return path.read_text().strip() if path.exists() else None

    def mistake_log(self, index: int) -> Path:
        return self.workdir / f"mistake-{index}.log"

    def start_mistake(self, index: int) -> subprocess.Popen[bytes]:
        """A scheduler started by mistake beside the others: a fresh, empty store."""
        db = self.workdir / "mistakes" / f"{index}.db"
        return self._spawn(self._scheduler_args(db), self.mistake_log(index).name)

    def _agent_args(self, host: str, data_dir: Path) -> list[str]:
        t = TIMINGS
        args = ["ip", "netns", "exec", self.agents[host].netns, sys.executable, "-m", "hostagent"]
        capacity = HOST_CAPACITY if self.qemu is None else self.qemu.capacity
        args += ["--nats", self.url, "--host-id", host, "--capacity", capacity]
        args += ["--fault-domain", f"fd-{host}", "--data-dir", str(data_dir)]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        if self.qemu is not None:
            args += self.qemu.agent_args()
        if self.agents[host].underlay_ip:
            args += ["--underlay-ip", self.agents[host].underlay_ip]
        return [*args, "--fence-after", str(t["fence_after_s"]), "--log-level", "DEBUG"]

    def start_agent(self, host: str) -> None:
        agent = self.agents[host]
        agent.process = self._spawn(self._agent_args(host, self.agents_dir), f"agent-{host}.log")
        agent.started_s = time.monotonic()

    def duplicate_dir(self, index: int) -> Path:
        """The data dir (and so the audit log) of fault ``index``'s second agent."""
        return self.workdir / "duplicates" / str(index)

    def start_duplicate(self, host: str, index: int) -> subprocess.Popen[bytes]:
        """A second agent claiming ``host``'s id (beside it, with a data dir of its own)."""
        args = self._agent_args(host, self.duplicate_dir(index))
        return self._spawn(args, f"duplicate-{index}-{host}.log")

    def settled(self, host: str | None, for_s: float) -> bool:
        """nats-server, the schedulers and ``host``'s agent (if any) have all run for ``for_s``,
        none is stopped, and no fault has kept them apart for as long: the leader has heard the
        agent as the holder of its id (a holder unheard for ``claim_after_s`` is taken to have
        restarted, and a second agent then rightly takes its id over)."""
        now_s = time.monotonic()
        started = list(self.started_s.values())
        started += [self.calm_from_s.get(None, 0.0), self.calm_from_s.get(host, 0.0)]
        if host is not None:
            agent = self.agents[host]
            if agent.process is None or agent.stopped:
                return False
            started.append(agent.started_s)
        running = all(p is not None for p in self.schedulers.values())
        return running and not self.stopped and all(now_s - t >= for_s for t in started)

    def signal_agent(self, host: str, sig: signal.Signals) -> None:
        agent = self.agents[host]
        assert agent.process is not None
        agent.process.send_signal(sig)
        if sig is signal.SIGKILL:
            agent.process.wait(timeout=15)
            agent.process = None
            agent.stopped = False
        elif sig in (signal.SIGSTOP, signal.SIGCONT):
            agent.stopped = sig is signal.SIGSTOP

    def revive(self) -> list[str]:
        """Restart whatever exited without being told to (a crash is a finding): what it was."""
        crashed = []
        if self.nats is not None and self.nats.process.poll() is not None:
            crashed.append(f"nats-server exited {self.nats.process.returncode}")
            self.start_nats()
        for name, process in self.schedulers.items():
            if process is not None and process.poll() is not None:
                crashed.append(f"scheduler {name} exited {process.returncode}")
                self.start_scheduler(name)
        for host, agent in self.agents.items():
            if agent.process is not None and agent.process.poll() is not None:
                crashed.append(f"agent {host} exited {agent.process.returncode}")
                self.start_agent(host)
        return crashed

    def stop(self) -> None:
        """Stop every process, then remove the namespaces: safe to call after any failure."""
        procs = [a.process for a in self.agents.values() if a.process is not None]
        procs += [p for p in self.schedulers.values() if p is not None]
        for agent in self.agents.values():
            if agent.process is not None and agent.stopped:
                agent.process.send_signal(signal.SIGCONT)
        for name in sorted(self.stopped):
            if name == "nats" and self.nats is not None:
                self.nats.process.send_signal(signal.SIGCONT)
            elif (process := self.schedulers.get(name)) is not None:
                process.send_signal(signal.SIGCONT)
        self.stopped.clear()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.qemu is not None:
            self._stop_qemu()
        if self.nats is not None:
            self.nats.stop()
        self.network.close()

    def _stop_qemu(self) -> None:
        """Guests and fence guards outlive their agents: stop them, then unmount the disks."""
        stop_guests(self.agents_dir)
        stop_replica_servers(self.agents_dir)
        for host in self.agents:
            pid = guard_pid(self.agents_dir, host)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for host in self.agents:
            disks.unmount(self.host_dir(host))
