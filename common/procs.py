"""Child processes for ``stratus up``, the tests and the benchmarks: start one with its log
file, wait for a line in that log, stop several (SIGTERM, then SIGKILL past a deadline), kill
one and reap it. The one copy of what each of them used to do by hand."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from common.errors import StratusError
from common.waiting import Deadline, poll_sync

Process = subprocess.Popen[bytes]


def spawn(
    args: list[str],
    log_path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
    preexec_fn: Callable[[], None] | None = None,
) -> Process:
    """Start ``args`` with no stdin, its stdout and stderr appended to ``log_path`` (discarded
    when None); ``new_session`` keeps a terminal's Ctrl-C from reaching it."""
    if log_path is None:
        return subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=new_session, preexec_fn=preexec_fn,
        )  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=new_session, preexec_fn=preexec_fn,
        )  # fmt: skip


def wait_for_log(
    process: Process, log_path: Path, pattern: re.Pattern[bytes], timeout_s: float
) -> re.Match[bytes] | None:
    """The first match of ``pattern`` in ``log_path``, polled until ``timeout_s`` (then None);
    ``StratusError`` at once if the process exits first."""

    def search() -> re.Match[bytes] | None:
        if process.poll() is not None:
            name = Path(str(process.args[0])).name  # type: ignore[index]
            raise StratusError(f"{name} exited with {process.returncode}; see {log_path}")
        return pattern.search(log_path.read_bytes()) if log_path.exists() else None

    return poll_sync(search, timeout_s=timeout_s, interval_s=0.005)


def stop_all(processes: Iterable[Process], timeout_s: float) -> list[int]:
    """SIGTERM every running one, wait up to ``timeout_s`` for them all, SIGKILL the rest and
    reap everything; the pids that had to be killed."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = Deadline.after(timeout_s)
    killed = []
    for process in processes:
        try:
            process.wait(timeout=deadline.remaining_s())
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed.append(process.pid)
    return killed


def kill(process: Process, timeout_s: float) -> None:
    """``kill -9`` and reap (a crash, on purpose)."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=timeout_s)
