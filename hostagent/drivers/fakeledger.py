"""The fake driver's disk ledger in files, shared by the agents of a cluster (one process each)
as real storage would be: what each copy of a replicated disk holds, and which writes were
acknowledged to guests. The chaos observer judges from these files alone that every copy the
scheduler counts current holds every acknowledged write.

Under the agents' common data directory (each host has its own ``<root>/<host>``):

- ``<host>/replicas/<disk_id>.writes``: the copy of the disk on that host, as the number of
  guest writes it holds. The agent running the VM writes to every copy of its quorum wherever
  it lives, as QEMU does over NBD, also while that copy's agent is killed or frozen (the
  replica server outlives its agent). A copy filled from another starts from that copy's
  count; a copy made where the file already is keeps it (a restarted agent finds its replica
  server's files again); a copy its host is told to delete is removed.
- ``<host>/replicas.lost``: the host is lost with its disks: every copy file is gone and its
  copies take no write any more (as :meth:`DiskLedger.host_gone`).
- ``<host>/guest-acks/<disk_id>``: the writes to the disk acknowledged to guests running on
  that host (every VM, every generation, across agent restarts). A disk's acknowledged writes
  are the sum over hosts.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from hostagent.drivers.fakequorum import DiskLedger

COPIES_DIR = "replicas"
COPY_SUFFIX = ".writes"
LOST_MARK = "replicas.lost"
ACKS_DIR = "guest-acks"


def copy_path(root: Path, host: str, disk_id: str) -> Path:
    return root / host / COPIES_DIR / f"{disk_id}{COPY_SUFFIX}"


def acks_path(root: Path, host: str, disk_id: str) -> Path:
    return root / host / ACKS_DIR / disk_id


def read_count(path: Path) -> int | None:
    """The number in ``path`` (None: no such file)."""
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return None


def store_count(path: Path, count: int) -> None:
    """Write ``count`` to ``path`` whole (a reader in another process never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(str(count))
    temporary.replace(path)


def read_copies(root: Path) -> dict[str, dict[str, int]]:
    """Every copy's write count: disk id -> host -> writes."""
    copies: dict[str, dict[str, int]] = {}
    for path in root.glob(f"*/{COPIES_DIR}/*{COPY_SUFFIX}"):
        count = read_count(path)
        if count is not None:
            disk_id = path.name.removesuffix(COPY_SUFFIX)
            copies.setdefault(disk_id, {})[path.parent.parent.name] = count
    return copies


def read_acknowledged(root: Path) -> dict[str, int]:
    """Every disk's writes acknowledged to its guests, on any host: disk id -> writes."""
    acked: dict[str, int] = {}
    for path in root.glob(f"*/{ACKS_DIR}/*"):
        if not path.name.startswith("."):
            acked[path.name] = acked.get(path.name, 0) + (read_count(path) or 0)
    return acked


@dataclass(kw_only=True)
class FileLedger(DiskLedger):
    """A :class:`DiskLedger` whose counts live in files under ``root``; the acknowledgements
    of this process's VMs are recorded under ``host_id``."""

    root: Path = Path()
    host_id: str = ""
    _acked: dict[str, int] = field(default_factory=dict)
    """This host's acknowledgements per disk (only this process writes them)."""
    settles_lazily: ClassVar[bool] = False
    """Another process may find a host lost at any time: every write is made at its round."""

    def count(self, disk_id: str, host: str) -> int | None:
        self.settle(disk_id)
        return read_count(copy_path(self.root, host, disk_id))

    def made(self, disk_id: str, host: str, copied_from: str | None = None) -> None:
        path = copy_path(self.root, host, disk_id)
        if copied_from is not None:
            store_count(path, self.count(disk_id, copied_from) or 0)
        elif not path.exists():
            store_count(path, 0)

    def deleted(self, disk_id: str, host: str) -> None:
        copy_path(self.root, host, disk_id).unlink(missing_ok=True)

    def host_gone(self, host: str) -> None:
        super().host_gone(host)
        shutil.rmtree(self.root / host / COPIES_DIR, ignore_errors=True)
        (self.root / host).mkdir(parents=True, exist_ok=True)
        (self.root / host / LOST_MARK).touch()

    def gone(self, host: str) -> bool:
        return host in self.down or (self.root / host / LOST_MARK).exists()

    def holds(self, disk_id: str, host: str) -> bool:
        return not self.gone(host) and self.count(disk_id, host) is not None

    def wrote(self, disk_id: str, host: str, times: int = 1) -> bool:
        if self.gone(host):
            return False
        path = copy_path(self.root, host, disk_id)
        store_count(path, (read_count(path) or 0) + times)
        return True

    def writable(self, host: str) -> bool:
        return not self.gone(host)

    def acknowledged(self, disk_id: str, times: int = 1) -> None:
        if disk_id not in self._acked:
            self._acked[disk_id] = read_count(acks_path(self.root, self.host_id, disk_id)) or 0
        self._acked[disk_id] += times
        store_count(acks_path(self.root, self.host_id, disk_id), self._acked[disk_id])
