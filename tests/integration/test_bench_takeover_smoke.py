"""The takeover benchmark in its tiny size: kill -9 of the leader under load on a 3-node NATS
cluster loses no acknowledged create, declares no host down and runs no VM twice (its times are
not asserted: the full mode measures them on a quiet machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.takeover import problems
from tests.integration.test_bench_smoke import run_smoke

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_takeover_smoke_loses_nothing_and_declares_no_host_down(tmp_path: Path) -> None:
    result: dict[str, Any] = run_smoke("bench.takeover", tmp_path)
    assert result["runs"] == 1
    assert result["replicas"] == 3 and result["nats_nodes"] == 3
    (run,) = result["per_run"]
    assert run["acked_creates"] > 0
    assert run["executions_audited"] > 0  # the two-hosts check read a real audit log
    assert result["hosts_declared_down"] == 0
    assert result["acked_creates_lost"] == 0
    assert result["vms_on_two_hosts"] == 0
    assert run["api_answer_s"] > 0 and run["create_acked_s"] > 0


def test_the_full_mode_fails_on_a_loss_a_missed_target_or_too_few_runs() -> None:
    good = {
        "runs": 5,
        "api_answer": {"p99_ms": 4200.0},
        "meets_target": True,
        "acked_creates_lost": 0,
        "hosts_declared_down": 0,
        "vms_on_two_hosts": 0,
    }
    assert problems(good, timed=True) == []
    slow = {**good, "runs": 3, "api_answer": {"p99_ms": 6100.0}, "meets_target": False}
    assert problems(slow, timed=True) == [
        "3 runs: the target needs at least 5",
        "API answer p99 6.10 s > 5.0 s",
    ]
    assert problems(slow, timed=False) == []  # the smoke's times are not judged
    assert problems({**good, "acked_creates_lost": 2}, timed=False) == [
        "2 acknowledged creates lost"
    ]
