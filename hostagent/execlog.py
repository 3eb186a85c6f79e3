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


def read_execlog(path: Path) -> list[Execution]:
    """Every line of an execution log (for tests and audits)."""
    with path.open("rb") as file:
        return [execution_decoder.decode(line) for line in file if line.strip()]
