"""The console buffer keeps the newest bytes and counts offsets over everything ever written."""

from __future__ import annotations

import pytest

from hostagent.drivers.consolebuf import ConsoleBuffer


def test_offsets_count_every_byte_and_only_the_newest_are_kept() -> None:
    buffer = ConsoleBuffer(capacity_bytes=8)
    buffer.append(b"hello ")
    buffer.append(b"world\n")
    assert (buffer.start, buffer.end) == (4, 12)
    assert buffer.read(None, 100) == (4, b"o world\n")


@pytest.mark.parametrize(
    ("offset", "max_bytes", "expected"),
    [
        (None, 3, (9, b"ld\n")),
        (6, 100, (6, b"world\n")),
        (6, 2, (6, b"wo")),
        (12, 100, (12, b"")),
        (0, 100, (4, b"o world\n")),  # dropped already: from the oldest kept
        (40, 100, (4, b"o world\n")),  # past the end: the console started again
    ],
    ids=["tail", "from-offset", "bounded", "at-end", "too-old", "past-end"],
)
def test_read(offset: int | None, max_bytes: int, expected: tuple[int, bytes]) -> None:
    buffer = ConsoleBuffer(capacity_bytes=8)
    buffer.append(b"hello world\n")
    assert buffer.read(offset, max_bytes) == expected


def test_an_empty_buffer_reads_nothing() -> None:
    assert ConsoleBuffer().read(None, 10) == (0, b"")
    with pytest.raises(ValueError, match="at least one byte"):
        ConsoleBuffer(capacity_bytes=0)
