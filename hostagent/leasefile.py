"""The lease file: what the agent publishes of its lease for the host's fence guard
(hostagent/fenceguard.py), and the rule that says when the guard must fence. Stdlib only, like
the guard.

``<data_dir>/<host_id>/lease.json`` holds the lease expiry in CLOCK_MONOTONIC seconds, the
agent's pid and start time, and the kernel boot id (monotonic time means nothing across a
reboot). The agent writes it atomically on every renewal (hostagent/fencing.py); the guard
reads it every ``fenceguard.CHECK_S``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

AGENT_GRACE_S = 0.5
"""While the agent process lives, it fences its own VMs at expiry; the guard steps in only this
much later (a stuck agent). Well within config.FENCE_MARGIN_S."""
LEASE_FILE = "lease.json"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What the agent publishes of its lease; times are CLOCK_MONOTONIC seconds."""

    expires_at_s: float | None
    """None: no lease held."""
    written_at_s: float
    pid: int
    """The agent's process, and its start time (``/proc/PID/stat`` starttime): a pid alone may
    have been reused."""
    pid_start: int
    boot_id: str


def encode_lease(record: LeaseRecord) -> bytes:
    return json.dumps(
        {
            "expires_at_s": record.expires_at_s,
            "written_at_s": record.written_at_s,
            "pid": record.pid,
            "pid_start": record.pid_start,
            "boot_id": record.boot_id,
        }
    ).encode()


def decode_lease(data: bytes) -> LeaseRecord | None:
    """The record, or None when ``data`` is not a well-formed lease."""
    try:
        raw = json.loads(data)
        expires = raw["expires_at_s"]
        record = LeaseRecord(
            expires_at_s=None if expires is None else float(expires),
            written_at_s=float(raw["written_at_s"]),
            pid=int(raw["pid"]),
            pid_start=int(raw["pid_start"]),
            boot_id=str(raw["boot_id"]),
        )
    except (ValueError, TypeError, KeyError):
        return None
    finite = [record.written_at_s] + ([record.expires_at_s] if record.expires_at_s else [])
    return record if all(math.isfinite(x) for x in finite) and record.pid > 0 else None


def fence_due(lease: LeaseRecord | None, *, now_s: float, boot_id: str, agent_alive: bool) -> bool:
    """Whether the host's VMs must not execute now. Pure.

    No readable lease, or one from another kernel boot, fences at once. Otherwise the lease's
    expiry (or, with no lease held, the moment the record was written) is the deadline; a live
    agent gets ``AGENT_GRACE_S`` to fence its VMs itself, so each fence is logged once.
    """
    if lease is None or lease.boot_id != boot_id:
        return True
    due_s = lease.written_at_s if lease.expires_at_s is None else lease.expires_at_s
    if agent_alive:
        due_s += AGENT_GRACE_S
    return now_s >= due_s


def host_dir(data_dir: str | Path, host_id: str) -> Path:
    return Path(data_dir) / host_id


def lease_path(data_dir: str | Path, host_id: str) -> Path:
    return host_dir(data_dir, host_id) / LEASE_FILE


def write_lease(path: Path, record: LeaseRecord) -> None:
    """Atomically: a reader sees the old record or the new one, never a partial one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(encode_lease(record))
    partial.replace(path)


def read_lease(path: Path) -> LeaseRecord | None:
    try:
        return decode_lease(path.read_bytes())
    except OSError:
        return None


def current_boot_id() -> str:
    return BOOT_ID_PATH.read_text().strip()
