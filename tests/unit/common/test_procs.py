"""Child processes: output lands in the log, a log line is awaited, a stubborn child is killed
at the deadline and reaped, a child that dies ends the wait at once."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from common import procs
from common.errors import StratusError

READY = re.compile(rb"ready on (\d+)")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_log_line_is_awaited_and_its_match_returned(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    child = procs.spawn(
        python("import time; print('ready on 4321', flush=True); time.sleep(60)"), log
    )
    try:
        match = procs.wait_for_log(child, log, READY, timeout_s=10)
        assert match is not None and match[1] == b"4321"
    finally:
        assert procs.stop_all([child], timeout_s=5) == []  # SIGTERM was enough
    assert child.returncode is not None


def test_a_child_that_exits_ends_the_wait_with_its_code(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = procs.spawn(python("import sys; sys.exit(3)"), log)
    with pytest.raises(StratusError, match="exited with 3"):
        procs.wait_for_log(child, log, READY, timeout_s=10)


def test_a_child_ignoring_sigterm_is_killed_at_the_deadline(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    code += "print('ready on 1', flush=True); time.sleep(60)"
    child = procs.spawn(python(code), log)
    assert procs.wait_for_log(child, log, READY, timeout_s=10) is not None
    assert procs.stop_all([child], timeout_s=0.2) == [child.pid]
    assert child.returncode == -9


def test_kill_reaps(tmp_path: Path) -> None:
    child = procs.spawn(python("import time; time.sleep(60)"), None)
    procs.kill(child, timeout_s=5)
    assert child.returncode == -9
