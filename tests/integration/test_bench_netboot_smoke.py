"""bench.netboot runs in its tiny size (one VM, real QEMU, its host in a namespace) and writes
its result (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netkit import require_netns
from tests.qemukit import boot_kit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_netboot_smoke_times_a_vm_from_create_to_answering_on_its_address(tmp_path: Path) -> None:
    require_netns()
    kit = boot_kit()
    env = dict(os.environ, STRATUS_BENCH_RESULTS=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "bench.netboot", "--smoke", "--boot-dir", str(kit)],
        env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "netboot-smoke.json").read_text())
    assert result["machine"]["load_average_at_start"]
    assert result["vms"] == result["answered"] == 1
    running, answer = result["create_to_running_ms"], result["create_to_answer_ms"]
    assert running["p50_ms"] > 0 and answer["p50_ms"] > 0
