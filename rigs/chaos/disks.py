"""A small tmpfs as an agent's data disk, so that a fault can fill it (and free it again).

Each tmpfs is mounted in the root mount namespace before its agent starts (the agent's own
namespace, made by ``ip netns exec``, is a copy that includes it), with the source name
``stxc<pid in hex>-disk``: the mounts of a crashed run (its process gone) are found in
/proc/mounts and removed at the start of the next one, as netns.py does for namespaces.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from pathlib import Path

from rigs.chaos.netns import PREFIX

FILLER = ".chaos-filler"
_SOURCE_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})-disk$")
_CHUNK_BYTES = 1024 * 1024


def source_name() -> str:
    return f"{PREFIX}{os.getpid():06x}"[:10] + "-disk"


def mount(path: Path, size_mib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", source_name(), str(path)],
        check=True,
        capture_output=True,
        timeout=15,
    )


def unmount(path: Path) -> None:
    """Detach the tmpfs (lazily: a process that still has a file open keeps it until it ends)."""
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=15)


def fill(path: Path) -> int:
    """Fill the filesystem at ``path`` until a write fails with ENOSPC; the bytes written."""
    written = 0
    with (path / FILLER).open("ab", buffering=0) as file:
        for size in (_CHUNK_BYTES, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    written += file.write(block) or 0  # a short write fills the last pages
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def free(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (path / FILLER).unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers() -> list[str]:
    """Unmount the tmpfs disks of runs whose process is gone; their mount points."""
    removed = []
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 2 or (match := _SOURCE_RE.match(fields[0])) is None:
            continue
        if not _pid_alive(int(match[1], 16)):
            unmount(Path(fields[1]))
            removed.append(fields[1])
    return removed
