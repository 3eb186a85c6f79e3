"""The chaos cluster: nats-server (JetStream on disk), the scheduler and agents as processes.

Each agent runs inside its own network namespace (tests/chaos/netns.py); nats-server listens on
the hub address every namespace reaches, and restarts on the same port with the same store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.natsserver import NatsServer, start_nats_server
from tests.chaos.netns import Network

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

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait(timeout=15)
        self.scheduler = None

    def start_agent(self, host: str) -> None:
        agent = self.agents[host]
        t = TIMINGS
        args = ["ip", "netns", "exec", agent.netns, sys.executable, "-m", "hostagent"]
        args += ["--nats", self.url, "--host-id", host, "--capacity", HOST_CAPACITY]
        args += ["--fault-domain", f"fd-{host}", "--data-dir", str(self.agents_dir)]
        args += ["--heartbeat-interval", str(t["heartbeat_interval_s"])]
        args += ["--fence-after", str(t["fence_after_s"]), "--log-level", "DEBUG"]
        agent.process = self._spawn(args, f"agent-{host}.log")

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
