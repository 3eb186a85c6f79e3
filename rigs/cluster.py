"""A real local cluster: the scheduler and host agents as separate processes (tests, bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from common import procs
from common.natsserver import NatsServer


class Timings(TypedDict):
    heartbeat_interval_s: float
    fence_after_s: float
    dead_after_s: float


FAST_TIMINGS = Timings(heartbeat_interval_s=0.2, fence_after_s=0.8, dead_after_s=1.8)
"""Short knobs that keep the safety rule: dead_after_s >= fence_after_s + 1."""


@dataclass
class Cluster:
    nats: NatsServer
    workdir: Path
    timings: Timings = field(default_factory=lambda: Timings(**FAST_TIMINGS))
    scheduler: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.workdir / "scheduler.db"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return procs.spawn([sys.executable, *args], self.workdir / log_name, env=env)

    def start_scheduler(self, *extra: str) -> None:
        t = self.timings
        self.scheduler = self._spawn(
            [
                "-m",
                "scheduler",
                "--nats",
                self.nats.url,
                "--db",
                str(self.db_path),
                "--heartbeat-interval",
                str(t["heartbeat_interval_s"]),
                "--fence-after",
                str(t["fence_after_s"]),
                "--dead-after",
                str(t["dead_after_s"]),
                "--log-level",
                "DEBUG",
                *extra,
            ],
            "scheduler.log",
        )

    def start_agent(
        self,
        host: str,
        *,
        capacity: str = "8c/16g",
        fault_domain: str = "fd-0",
        nats_url: str | None = None,
        extra: tuple[str, ...] = (),
        key: str | None = None,
    ) -> None:
        """Start an agent for ``host``, known here (and by its log) as ``key`` (default: the
        host id; another key runs a second agent under the same host id)."""
        t = self.timings
        key = key or host
        self.agents[key] = self._spawn(
            [
                "-m",
                "hostagent",
                "--nats",
                nats_url or self.nats.url,
                "--host-id",
                host,
                "--capacity",
                capacity,
                "--fault-domain",
                fault_domain,
                "--data-dir",
                str(self.workdir / "agents"),
                "--heartbeat-interval",
                str(t["heartbeat_interval_s"]),
                "--fence-after",
                str(t["fence_after_s"]),
                "--log-level",
                "DEBUG",
                *extra,
            ],
            f"agent-{key}.log",
        )

    def kill_agent(self, host: str) -> None:
        procs.kill(self.agents.pop(host), timeout_s=5)

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        procs.kill(self.scheduler, timeout_s=5)
        self.scheduler = None

    def execution_log(self) -> list[dict[str, object]]:
        """Every agent's audit log of VM executions, merged and sorted by time."""
        rows: list[dict[str, object]] = []
        for path in (self.workdir / "agents").glob("*/executions.jsonl"):
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return sorted(rows, key=lambda row: float(row["t"]))  # type: ignore[arg-type]

    def stop(self) -> None:
        procs.stop_all([*self.agents.values(), *([self.scheduler] if self.scheduler else [])], 5)
        self.agents.clear()
        self.scheduler = None


EXECUTING = {
    "running": True,
    "resume": True,
    "pause": False,
    "stop": False,
    "destroy": False,
    "fail": False,
}


def overlapping_executions(rows: list[dict[str, object]], killed: dict[str, float]) -> list[str]:
    """VMs that executed on two hosts at the same moment, from the agents' own audit logs.

    ``killed`` maps a host to the wall time it was kill -9'd: its VMs stopped executing then.
    """
    executing: dict[tuple[str, str], bool] = {}
    problems: list[str] = []
    events = [(float(r["t"]), str(r["host"]), str(r["vm"]), str(r["event"])) for r in rows]  # type: ignore[arg-type]
    events += [(t, host, "*", "killed") for host, t in killed.items()]
    for t, host, vm, event in sorted(events):
        if event == "killed":
            for key in [k for k in executing if k[0] == host]:
                executing[key] = False
            continue
        if event not in EXECUTING:
            continue
        executing[(host, vm)] = EXECUTING[event]
        on = [h for (h, v), running in executing.items() if v == vm and running]
        if len(on) > 1:
            problems.append(f"t={t:.3f} vm={vm} executing on {sorted(on)}")
    return problems
