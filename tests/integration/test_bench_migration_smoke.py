"""bench.migration's qemu-alone part runs in its tiny size (two moves of a counting guest by two
QEMU processes in network namespaces, no Stratus) and writes its result (no timing asserted)."""

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


@pytest.mark.parametrize("counter", ["fork", "read"])
def test_qemu_alone_smoke_moves_the_counting_guest_without_a_restart(
    tmp_path: Path, counter: str
) -> None:
    require_netns()
    boot_kit()
    env = dict(os.environ, STRATUS_BENCH_RESULTS=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "bench.migration", "--part", "qemu-alone", "--smoke",
         "--counter", counter],
        env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "migration-smoke.json").read_text())
    assert result["machine"]["load_average_at_start"]
    alone = result["qemu-alone"]
    assert (alone["moves"], alone["restarts"], alone["counter"]) == (2, 0, counter)
    for move in alone["per_move"]:
        # It went on counting (a line cut by the pause is seen whole on neither side).
        assert move["last_count"] < move["first_count"] <= move["last_count"] + 2
        assert move["downtime_ms"] > 0 and move["qemu_downtime_ms"] >= 0
        assert set(move["steps_ms"]) == {
            "last_line_to_stop", "stop_to_arrived", "arrived_to_cont", "cont_to_first_line",
        }  # fmt: skip
    assert [m["to"] for m in alone["per_move"]] == ["h2", "h1"], "back and forth"
