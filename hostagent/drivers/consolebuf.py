"""The most recent output of one serial console, with offsets that count every byte ever
written (pure: no I/O). The fake driver keeps one per VM."""

from __future__ import annotations

DEFAULT_CAPACITY_BYTES = 64 * 1024


class ConsoleBuffer:
    def __init__(self, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        if capacity_bytes <= 0:
            raise ValueError("a console buffer holds at least one byte")
        self.capacity_bytes = capacity_bytes
        self._data = bytearray()
        self._start = 0
        """Offset of ``_data[0]``: the oldest byte still kept."""

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        """Offset just past the newest byte: how many bytes were ever written."""
        return self._start + len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data
        excess = len(self._data) - self.capacity_bytes
        if excess > 0:
            del self._data[:excess]
            self._start += excess

    def read(self, offset: int | None, max_bytes: int) -> tuple[int, bytes]:
        """(start offset, bytes): at most ``max_bytes`` from ``offset`` (None: the newest
        ``max_bytes``); an offset outside what is kept reads from the oldest byte kept."""
        if offset is None:
            begin = max(self._start, self.end - max_bytes)
        elif self._start <= offset <= self.end:
            begin = offset
        else:
            begin = self._start
        index = begin - self._start
        return begin, bytes(self._data[index : index + max(0, max_bytes)])
