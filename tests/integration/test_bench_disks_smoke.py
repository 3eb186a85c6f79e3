"""bench.disks runs in its smoke size (real QEMU: replica servers on loopback, and one host of
three in namespaces lost under a replicated VM) and writes its result (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qemukit import boot_kit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_disks_smoke_measures_writes_per_storage_kind_a_fill_and_a_failover(tmp_path: Path) -> None:
    boot_kit()
    env = dict(os.environ, STRATUS_BENCH_RESULTS=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "bench.disks", "--smoke"],
        env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "disks-smoke.json").read_text())
    assert set(result["writes"]) == {"host_local", "replicated_2", "replicated_3"}
    for kind in result["writes"].values():
        assert kind["write_4k_ms"]["p50"] >= 0 and kind["write_1m_mib_s"]["p50"] > 0
    assert result["fill"]["fill_mib"] == 16 and result["fill"]["fill_mib_s"] > 0
    [failover] = result["failover"]["rounds"]  # one host lost, the VM ran elsewhere
    assert 0 < failover["declared_dead_after_s"] <= failover["failover_s"]
