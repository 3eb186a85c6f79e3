"""A simulated pool's execution log: its hosts' lines, each naming its host, in the order they
were recorded, written one batch per flush; a failed write is logged and dropped, never raised,
and the next batch is written as usual."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.execlog import ExecEvent, PooledExecLog, read_execlog
from tests.unit.hostagent.test_fence_robust import full_disk_log


def test_lines_of_every_host_are_written_in_order_at_each_flush(tmp_path: Path) -> None:
    path = tmp_path / "sim-pool" / "executions.jsonl"
    ticks = iter(range(1, 100))
    pool = PooledExecLog(path, wall_s=lambda: float(next(ticks)))
    h1, h2 = pool.host("h1"), pool.host("h2")
    h1.record("vm-1", 1, ExecEvent.START)
    h2.record("vm-2", 4, ExecEvent.START)
    h1.record("vm-1", 1, ExecEvent.RUNNING)
    assert path.read_bytes() == b""  # kept until the pool flushes
    pool.flush()
    rows = [(r.t, r.host, r.vm, r.gen, r.event) for r in read_execlog(path)]
    assert rows == [
        (1.0, "h1", "vm-1", 1, ExecEvent.START),
        (2.0, "h2", "vm-2", 4, ExecEvent.START),
        (3.0, "h1", "vm-1", 1, ExecEvent.RUNNING),
    ]
    h2.record("vm-2", 4, ExecEvent.PAUSE)
    h2.close()  # a host's view leaves the file to the pool
    pool.close()  # closing writes what is kept
    assert [(r.host, r.event) for r in read_execlog(path)][-1] == ("h2", ExecEvent.PAUSE)


def test_a_failed_write_is_logged_and_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = PooledExecLog(full_disk_log(tmp_path / "sim-pool" / "executions.jsonl"))
    pool.host("h1").record("vm-1", 1, ExecEvent.PAUSE)
    pool.flush()  # does not raise
    assert "audit lines not written lines=1 first_vm=vm-1" in caplog.text
    assert "No space left" in caplog.text
    caplog.clear()
    pool.flush()  # the failed batch is not written again
    assert caplog.text == ""
    pool.close()
