"""Every end-to-end benchmark runs in its tiny size and writes its results (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def run_smoke(module: str, tmp_path: Path, *args: str) -> dict[str, object]:
    env = dict(os.environ, STRATUS_BENCH_RESULTS=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = tmp_path.glob("*-smoke.json")
    result: dict[str, object] = json.loads(path.read_text())
    assert result["machine"]["load_average_at_start"]  # type: ignore[index]
    return result


def test_e2e_smoke_places_every_vm_over_api_and_jobs(tmp_path: Path) -> None:
    result = run_smoke("bench.e2e", tmp_path)
    phases = result["phases"]
    assert isinstance(phases, list)
    assert [p["via"] for p in phases] == ["nats request/reply api", "jetstream jobs stream"]
    assert all(p["vms"] == 60 and p["vms_per_s"] > 0 and not p["errors"] for p in phases)
    assert result["networks"] == 2  # every VM has a NIC, by default
    assert all(min(p["ceiling_vms_per_s"].values()) > 0 for p in phases)  # what its CPU allows


def test_e2e_bus_alone_smoke_passes_every_vm_through_the_stand_ins(tmp_path: Path) -> None:
    """The floor's stand-ins answer, command, report and publish every VM's running event."""
    result = run_smoke("bench.e2e", tmp_path, "--part", "bus-alone")
    assert result["part"] == "bus-alone"
    phases = result["phases"]
    assert isinstance(phases, list) and len(phases) == 1
    phase = phases[0]
    assert phase["vms"] == 60 and phase["vms_per_s"] > 0 and not phase["errors"]
    assert phase["cpu_ms_per_vm_above_idle"]["all"] >= 0  # 60 VMs: within the idle CPU's noise
    assert min(phase["ceiling_vms_per_s"].values()) > 0
    assert set(phase["cpu_s_per_1000_vms"]) == {
        "scheduler",
        "pool-e2e",
        "nats-server",
        "bench client",
    }


def test_failover_smoke_moves_every_vm_after_kill_and_silence(tmp_path: Path) -> None:
    result = run_smoke("bench.failover", tmp_path)
    kinds = result["kinds"]
    assert isinstance(kinds, dict)
    assert set(kinds) == {"kill -9", "silent"}
    assert all(kind["max_s"] > 0 for kind in kinds.values())


def test_heartbeat_smoke_measures_the_scheduler(tmp_path: Path) -> None:
    result = run_smoke("bench.heartbeat", tmp_path)
    scheduler = result["scheduler"]
    assert isinstance(scheduler, dict)
    assert scheduler["rss_mib"] > 0


def test_restart_smoke_reconciles_every_host_without_declaring_one_down(tmp_path: Path) -> None:
    result = run_smoke("bench.restart", tmp_path)
    assert result["hosts_declared_down"] == 0
    assert result["all_hosts_reconciled_in_s"] >= result["api_answers_in_s"]  # type: ignore[operator]
