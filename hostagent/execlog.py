"""The execution log: one JSON line per transition that starts or ends a VM's execution.

``<data_dir>/<host_id>/executions.jsonl`` is an audit trail: tests merge the logs of every host
to prove that no VM ever executed on two hosts at once. ``start``/``incoming`` mean the host
holds the VM (its resources) without it executing yet; ``running``/``resume`` mean the VM may
execute from then on; ``pause``/``stop``/``destroy``/``fail`` mean it no longer does. Each line
is written (one unbuffered append) as the transition happens.

Writing it never stops what it records: a failed write (a full disk) is logged and dropped, and
the pause, stop or start it describes has already happened. Record after acting, never before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import IO

import msgspec

log = logging.getLogger(__name__)


class ExecEvent(StrEnum):
    START = "start"
    INCOMING = "incoming"
    """The destination of a live migration holds the VM; it does not execute until ``resume``."""
    RUNNING = "running"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    DESTROY = "destroy"
    FAIL = "fail"


class Execution(msgspec.Struct):
    t: float
    """Wall-clock seconds (``time.time()``), comparable across hosts of one machine."""
    host: str
    vm: str
    gen: int
    event: ExecEvent


_encoder = msgspec.json.Encoder()
execution_decoder = msgspec.json.Decoder(Execution)


def execlog_path(data_dir: str | Path, host_id: str) -> Path:
    return Path(data_dir) / host_id / "executions.jsonl"


class ExecLog:
    def __init__(
        self, path: Path, host_id: str, *, wall_s: Callable[[], float] = time.time
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.host_id = host_id
        self._wall_s = wall_s
        self._file: IO[bytes] = path.open("ab", buffering=0)  # unbuffered: a failed write
        # leaves nothing behind to fail again (or to land later, out of order)

    def record(self, vm: str, generation: int, event: ExecEvent) -> None:
        """Append one line; a failed write is logged (ERROR) and dropped, never raised."""
        line = Execution(self._wall_s(), self.host_id, vm, generation, event)
        try:
            self._file.write(_encoder.encode(line) + b"\n")
            self._file.flush()
        except OSError as exc:
            log.error(
                "audit line not written vm=%s generation=%d event=%s path=%s error=%s",
                vm,
                generation,
                event,
                self.path,
                exc,
            )

    def close(self) -> None:
        self._file.close()


class PooledExecLog:
    """The execution log of a simulated pool (hostagent/simpool.py): one file for every host
    (each line names its host), written a batch at a time. A line per system call was a tenth
    of the pool's CPU; here :meth:`record` keeps the line and :meth:`flush` writes what was kept
    in one append. The pool flushes before each heartbeat it sends (so a line is in the file
    before the scheduler can hear of what it records) and at every turn of its wheel.

    A simulated host's VMs live in the pool's process: lines not yet written when the process
    dies recorded transitions of VMs that died with it, a few milliseconds before. A failed
    write is logged (ERROR) and its lines dropped, as :class:`ExecLog` drops one."""

    def __init__(self, path: Path, *, wall_s: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._wall_s = wall_s
        self._pending: list[Execution] = []
        self._file: IO[bytes] = path.open("ab", buffering=0)

    def host(self, host_id: str) -> ExecLog:
        """One host's execution log: its lines go to this file."""
        return _PoolHostLog(self, host_id)

    def record(self, host_id: str, vm: str, generation: int, event: ExecEvent) -> None:
        self._pending.append(Execution(self._wall_s(), host_id, vm, generation, event))

    def flush(self) -> None:
        """Write the lines kept since the last flush (one append)."""
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._file.write(_encoder.encode_lines(lines))
        except OSError as exc:
            log.error(
                "audit lines not written lines=%d first_vm=%s path=%s error=%s",
                len(lines),
                lines[0].vm,
                self.path,
                exc,
            )

    def close(self) -> None:
        self.flush()
        self._file.close()


class _PoolHostLog(ExecLog):
    """One simulated host's view of its pool's execution log."""

    def __init__(self, pool: PooledExecLog, host_id: str) -> None:  # no super(): no file
        self.path = pool.path
        self.host_id = host_id
        self._pool = pool

    def record(self, vm: str, generation: int, event: ExecEvent) -> None:
        self._pool.record(self.host_id, vm, generation, event)

    def close(self) -> None:
        """The pool closes the file."""


def read_execlog(path: Path) -> list[Execution]:
    """Every line of an execution log (for tests and audits)."""
    with path.open("rb") as file:
        return [execution_decoder.decode(line) for line in file if line.strip()]
