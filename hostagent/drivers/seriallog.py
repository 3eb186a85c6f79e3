"""A QEMU VM's serial log (``serial.log``, QEMU's chardev ``logfile``), kept bounded on disk.

QEMU writes every byte the guest sends to its serial port into the file for the life of the VM,
whether anyone is connected or not: left alone it grows without bound (a chatty guest fills the
host's disk). QEMU cannot be told to reopen the file, and truncating it would not help: QEMU
writes at its own file offset, so its next write would leave a hole as long as the old file.
The middle of the file is punched out instead (``fallocate(PUNCH_HOLE | KEEP_SIZE)``): its
blocks go back to the filesystem while the file's size, and so every offset, stays as it was.
Offsets remain file positions that count every byte the guest ever wrote, as the console
protocol wants.

Kept: the first ``HEAD_BYTES`` (the boot: the driver looks there for the readiness marker when
it adopts a running VM) and at least the last ``TAIL_BYTES``; a trim happens once more than
``TRIM_AT_BYTES`` are on disk, so a VM's log takes at most about that much. Readers skip the
punched range (``SEEK_DATA``/``SEEK_HOLE``): an offset inside it reads from the next byte kept.
On a filesystem that cannot punch holes the log is left whole (logged once per file).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

HEAD_BYTES: Final = 256 * 1024
TAIL_BYTES: Final = 1024 * 1024
TRIM_AT_BYTES: Final = HEAD_BYTES + 2 * TAIL_BYTES
"""Trim once this much is allocated: each trim frees about ``TAIL_BYTES``, not a few bytes."""
_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02
_unbounded: set[Path] = set()
"""Files whose filesystem refused to punch a hole (warned about once)."""


def kept_from(fd: int, offset: int) -> int | None:
    """The first byte kept at or after ``offset``; None when none is (``offset`` at the end)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise


def read_range(fd: int, offset: int | None, max_bytes: int) -> tuple[int, bytes]:
    """(start offset, bytes): at most ``max_bytes`` kept bytes from ``offset``, never across a
    punched range; None reads the newest ``max_bytes`` that are kept together. An offset inside
    a punched range reads from the next byte kept; one past the end (a new file: the VM
    started again) from the start."""
    size = os.fstat(fd).st_size
    if offset is None:
        begin = max(0, size - max_bytes)
        hole = os.lseek(fd, begin, os.SEEK_HOLE) if begin < size else size
        if hole < size:  # the newest bytes are behind a punched range: start after it
            begin = size if (found := kept_from(fd, hole)) is None else found
    else:
        begin = offset if 0 <= offset <= size else 0
        begin = size if (found := kept_from(fd, begin)) is None else found
    if begin >= size:
        return begin, b""
    end = min(size, begin + max(0, max_bytes), os.lseek(fd, begin, os.SEEK_HOLE))
    return begin, os.pread(fd, max(0, end - begin), begin)


def read_kept(path: Path) -> bytes:
    """Every byte kept, punched ranges left out (at most about ``TRIM_AT_BYTES``)."""
    pieces: list[bytes] = []
    with path.open("rb") as file:
        fd, position, size = file.fileno(), 0, os.fstat(file.fileno()).st_size
        while position < size and (begin := kept_from(fd, position)) is not None:
            end = min(size, os.lseek(fd, begin, os.SEEK_HOLE))
            pieces.append(os.pread(fd, end - begin, begin))
            position = end
    return b"".join(pieces)


def trim_due(fd: int) -> bool:
    return os.fstat(fd).st_blocks * 512 > TRIM_AT_BYTES


def trim(path: Path) -> int:
    """Punch out everything between the head and the last ``TAIL_BYTES`` (whole blocks only);
    return how many bytes the punched range spans (0: nothing to punch, or it cannot be)."""
    with path.open("r+b") as file:
        fd = file.fileno()
        stat = os.fstat(fd)
        block = max(stat.st_blksize, 4096)
        start = -(-HEAD_BYTES // block) * block  # the head, rounded up to whole blocks
        stop = (stat.st_size - TAIL_BYTES) // block * block
        if stop <= start:
            return 0
        if _punch(fd, start, stop - start) != 0:
            error = ctypes.get_errno()
            if path not in _unbounded:
                _unbounded.add(path)
                log.warning("serial log not bounded path=%s error=%s", path, os.strerror(error))
            return 0
        return stop - start


def _punch(fd: int, offset: int, length: int) -> int:
    """fallocate(2) punching ``length`` bytes at ``offset``: 0, or -1 with ctypes' errno set."""
    return int(_fallocate()(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length))


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int]:
    function = ctypes.CDLL(None, use_errno=True).fallocate
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    fallocate: Callable[[int, int, int, int], int] = function
    return fallocate
