"""The chaos cluster: nats-server (JetStream on disk), the scheduler and agents as processes.

Each agent runs inside its own network namespace (rigs/chaos/netns.py); nats-server listens on
the hub address every namespace reaches, and restarts on the same port with the same store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.natsserver import NatsServer, start_nats_server
from rigs.chaos.netns import Network

TIMINGS = {"heartbeat_interval_s": 0.2, "fence_after_s": 0.8, "dead_after_s": 1.8}
"""The integration tests' fast knobs (dead_after_s >= fence_after_s + 1)."""
HOST_CAPACITY = "8c/16g"
CPU_MILLI = 8000
MEM_MIB = 16 * 1024


@dataclass
class Agent:
    host: str
    netns: str
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    """SIGSTOPped right now."""
    started_s: float = 0.0
    """Monotonic seconds when this agent process was started."""


@dataclass
class Rig:
    workdir: Path
    network: Network
    hosts: int = 4
    nats: NatsServer | None = None
    hub: str = ""
    port: int = -1
    scheduler: subprocess.Popen[bytes] | None = None
    agents: dict[str, Agent] = field(default_factory=dict)
    started_s: dict[str, float] = field(default_factory=dict)
    """Monotonic seconds when nats-server and the scheduler were last started."""

    @property
    def url(self) -> str:
        return f"nats://{self.hub}:{self.port}"

    @property
    def agents_dir(self) -> Path:
        return self.workdir / "agents"

    def start(self) -> None:
        self.hub = self.network.hub()
        self.start_nats()
        self.start_scheduler()
        for i in range(1, self.hosts + 1):
            host = f"h{i}"
            self.agents[host] = Agent(host, self.network.add_namespace(host))
            self.start_agent(host)

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

    def start_scheduler(self) -> None:
        t = TIMINGS
        args = [sys.executable, "-m", "scheduler", "--nats", self.url]
        args += ["--db", str(self.workdir / "scheduler.db")]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        args += ["--fence-after", str(t["fence_after_s"]), "--dead-after", str(t["dead_after_s"])]
        self.scheduler = self._spawn([*args, "--log-level", "DEBUG"], "scheduler.log")
        self.started_s["scheduler"] = time.monotonic()

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait(timeout=15)
        self.scheduler = None

    def _agent_args(self, host: str, data_dir: Path) -> list[str]:
        t = TIMINGS
        args = ["ip", "netns", "exec", self.agents[host].netns, sys.executable, "-m", "hostagent"]
        args += ["--nats", self.url, "--host-id", host, "--capacity", HOST_CAPACITY]
        args += ["--fault-domain", f"fd-{host}", "--data-dir", str(data_dir)]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
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

    def settled(self, host: str, for_s: float) -> bool:
        """nats-server, the scheduler and ``host``'s agent have all run for ``for_s``, and the
        agent is not stopped: the scheduler has heard it as the holder of its id."""
        agent, now_s = self.agents[host], time.monotonic()
        return (
            agent.process is not None
            and not agent.stopped
            and all(now_s - t >= for_s for t in (agent.started_s, *self.started_s.values()))
        )

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
        if self.scheduler is not None and self.scheduler.poll() is not None:
            crashed.append(f"scheduler exited {self.scheduler.returncode}")
            self.start_scheduler()
        for host, agent in self.agents.items():
            if agent.process is not None and agent.process.poll() is not None:
                crashed.append(f"agent {host} exited {agent.process.returncode}")
                self.start_agent(host)
        return crashed

    def stop(self) -> None:
        """Stop every process, then remove the namespaces: safe to call after any failure."""
        procs = [a.process for a in self.agents.values() if a.process is not None]
        for agent in self.agents.values():
            if agent.process is not None and agent.stopped:
                agent.process.send_signal(signal.SIGCONT)
        if self.scheduler is not None:
            procs.append(self.scheduler)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.nats is not None:
            self.nats.stop()
        self.network.close()
