"""A QEMU VM's serial log stays bounded on disk while the guest writes, offsets keep counting
every byte, and the boot (the readiness marker) and the newest output stay readable.

The writer here does what QEMU's chardev logfile does: one file descriptor opened once, without
O_APPEND, writing at its own offset for the life of the VM."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.drivers import seriallog
from hostagent.drivers.qemuconsole import read_console
from hostagent.drivers.qemuproc import READY_MARKER, VmFiles, read_serial

LINE_BYTES = 16


def line(number: int) -> bytes:
    """Line ``number`` of the guest's output: its own offset is ``number * LINE_BYTES``."""
    return b"%015d\n" % number


class Guest:
    """Writes numbered lines to ``serial.log`` the way QEMU does."""

    def __init__(self, files: VmFiles) -> None:
        self.fd = os.open(files.serial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.lines = 0

    def boot(self) -> None:
        os.write(self.fd, (READY_MARKER + b" v").ljust(LINE_BYTES - 1) + b"\n")
        self.lines += 1

    def write_mib(self, mib: float) -> None:
        count = int(mib * 1024 * 1024) // LINE_BYTES
        os.write(self.fd, b"".join(line(self.lines + i) for i in range(count)))
        self.lines += count

    @property
    def end(self) -> int:
        return self.lines * LINE_BYTES


@pytest.fixture
def files(tmp_path: Path) -> VmFiles:
    return VmFiles(tmp_path)


@pytest.fixture
def guest(files: VmFiles) -> Iterator[Guest]:
    guest = Guest(files)
    guest.boot()
    yield guest
    os.close(guest.fd)


def on_disk(files: VmFiles) -> int:
    return files.serial.stat().st_blocks * 512


def test_polled_console_of_a_chatty_guest_stays_bounded(files: VmFiles, guest: Guest) -> None:
    """The relay reads each console ten times a second; with the guest writing 1 MiB between
    reads, 16 MiB later the file holds about TRIM_AT_BYTES, not 16 MiB."""
    for _ in range(16):
        guest.write_mib(1)
        read_console(files, 1, None, 4096)
    assert files.serial.stat().st_size == guest.end  # offsets still count every byte
    assert on_disk(files) <= seriallog.TRIM_AT_BYTES + 64 * 1024
    newest = read_console(files, 1, None, 4096)
    assert newest.end == guest.end
    assert newest.data.endswith(line(guest.lines - 1))


def test_what_is_kept_reads_back_at_its_own_offsets(files: VmFiles, guest: Guest) -> None:
    guest.write_mib(6)
    assert seriallog.trim(files.serial) > 0
    guest.write_mib(0.5)  # QEMU goes on writing at its offset after the punch
    assert files.serial.stat().st_size == guest.end
    # An offset inside the punched range reads from the next byte kept, at its true offset.
    chunk = read_console(files, 1, 3 * 1024 * 1024, 64)
    assert chunk.offset > 3 * 1024 * 1024
    assert chunk.offset % LINE_BYTES == 0
    assert chunk.data.startswith(line(chunk.offset // LINE_BYTES))
    # The head and an offset in it read as written, never running into the punched range.
    head = read_console(files, 1, 0, 2 * seriallog.HEAD_BYTES)
    assert head.data.startswith(READY_MARKER)
    assert len(head.data) <= seriallog.HEAD_BYTES + 4096 and b"\0" not in head.data
    # A reader that follows by offset gets the newest bytes whole.
    tail = read_console(files, 1, guest.end - 10 * LINE_BYTES, 4096)
    assert tail.data == b"".join(line(guest.lines - 10 + i) for i in range(10))


def test_the_driver_still_finds_the_boot_in_a_trimmed_log(files: VmFiles, guest: Guest) -> None:
    """An agent that adopts a running VM looks for the readiness marker in read_serial()."""
    guest.write_mib(8)
    seriallog.trim(files.serial)
    kept = read_serial(files)
    assert kept.startswith(READY_MARKER)
    assert b"\0" not in kept
    assert len(kept) <= seriallog.TRIM_AT_BYTES
    assert kept.endswith(line(guest.lines - 1))


def test_a_quiet_guest_is_left_whole(files: VmFiles, guest: Guest) -> None:
    guest.write_mib(1)
    before = files.serial.read_bytes()
    read_console(files, 1, None, 4096)
    with files.serial.open("rb") as log:
        assert not seriallog.trim_due(log.fileno())
    assert files.serial.read_bytes() == before


def test_reads_past_the_end_start_again_from_the_beginning(files: VmFiles, guest: Guest) -> None:
    """A VM started again has a new, shorter log: an old cursor past its end reads from 0."""
    chunk = read_console(files, 2, guest.end + 1000, 64)
    assert chunk.offset == 0 and chunk.data.startswith(READY_MARKER)
    assert read_console(files, 2, guest.end, 64).data == b""
