"""What the fence guard sees of its host and does to it, blocking and stdlib only: whether the
agent's process still runs, which VMs have a live QEMU process (the files of
hostagent/drivers/qemuproc.py), a QMP ``stop`` within a deadline over the monitor socket
reserved for the guard, and the audit line of each pause.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hostagent.leasefile import LeaseRecord

PAUSE_DEADLINE_S = 0.4
"""Each VM's pause (connect, greeting, ``query-status``, ``stop``) must finish within this; all
VMs are paused at once, so one hung monitor delays none of the others (the whole fence must fit
in config.FENCE_MARGIN_S). A pause past its deadline fails and is tried again."""
GUARD_SOCKET = "guard.sock"


# --------------------------------------------------------------------------- processes


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def agent_alive(lease: LeaseRecord) -> bool:
    return process_start(lease.pid) == lease.pid_start


def process_alive(pid: int, needle: bytes) -> bool:
    """Whether ``pid`` runs (not a zombie) with ``needle`` in its command line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X") and needle in cmdline


@dataclass(frozen=True, slots=True)
class GuardedVm:
    name: str
    generation: int
    pid: int
    dir: Path


def live_vms(qemu_root: Path) -> list[GuardedVm]:
    """The host's VMs whose QEMU process is alive (same files as hostagent/drivers/qemuproc)."""
    found: list[GuardedVm] = []
    for vm_dir in sorted((qemu_root / "vms").glob("*")):
        try:
            pid = int((vm_dir / "qemu.pid").read_text().strip())
            generation = int(json.loads((vm_dir / "vm.json").read_bytes())["generation"])
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if process_alive(pid, os.fsencode(qemu_root)):
            found.append(GuardedVm(vm_dir.name, generation, pid, vm_dir))
    return found


# --------------------------------------------------------------------------- QMP (blocking)


class _Qmp:
    """Just enough QMP over a blocking unix socket: greeting, capabilities, commands; every
    socket operation times out at ``deadline_s`` (CLOCK_MONOTONIC), the whole exchange's."""

    def __init__(self, path: Path, deadline_s: float) -> None:
        self._deadline_s = deadline_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(self._remaining_s())
        self._buffer = b""
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:  # through the directory's fd: no sun_path length limit
            self._sock.connect(f"/proc/self/fd/{dir_fd}/{path.name}")
        except OSError:
            self._sock.close()
            raise
        finally:
            os.close(dir_fd)

    def _remaining_s(self) -> float:
        remaining_s = self._deadline_s - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError("QMP deadline passed")
        return remaining_s

    def _message(self) -> dict[str, object]:
        while b"\n" not in self._buffer:
            self._sock.settimeout(self._remaining_s())
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"malformed QMP message: {line!r}")
        return message

    def execute(self, command: str) -> object:
        self._sock.settimeout(self._remaining_s())
        self._sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            reply = self._message()
            if "event" in reply:
                continue
            if "error" in reply:
                raise ValueError(f"QMP {command} failed: {reply['error']}")
            return reply.get("return")

    def __enter__(self) -> _Qmp:
        greeting = self._message()
        if "QMP" not in greeting:
            raise ValueError(f"unexpected QMP greeting: {greeting!r}")
        self.execute("qmp_capabilities")
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def pause_vm(vm: GuardedVm) -> bool:
    """QMP ``stop`` if the VM runs, within ``PAUSE_DEADLINE_S``; True if this paused it.
    Raises OSError (TimeoutError included) or ValueError."""
    path = vm.dir / GUARD_SOCKET
    if not path.exists():  # a VM started before guard sockets existed: the agent's socket
        path = vm.dir / "qmp.sock"
    with _Qmp(path, time.monotonic() + PAUSE_DEADLINE_S) as qmp:
        status = qmp.execute("query-status")
        if not isinstance(status, dict) or status.get("status") != "running":
            return False
        qmp.execute("stop")
        return True


def append_pause(execlog: Path, host_id: str, vm: GuardedVm, wall_s: float) -> None:
    """One whole line, one append: the agent appends to the same file (hostagent/execlog.py).
    Raises OSError (a full disk): the caller logs it, the pause has happened already."""
    line = {"t": wall_s, "host": host_id, "vm": vm.name, "gen": vm.generation, "event": "pause"}
    data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
    fd = os.open(execlog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
