"""The takeover benchmark in its tiny size: kill -9 of the leader under load on a 3-node NATS
cluster loses no acknowledged create, declares no host down and runs no VM twice (its times are
not asserted: the full mode measures them on a quiet machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
