"""A QEMU VM's serial console as the driver serves it: output read from ``serial.log`` (QEMU
logs every byte the guest writes, connected or not; offsets are file positions), input typed
through ``console.sock`` (a ``-chardev socket`` QEMU listens on)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from common.errors import DriverError
from hostagent.drivers.base import ConsoleBytes
from hostagent.drivers.qemuproc import VmFiles


def read_console(
    files: VmFiles, generation: int, offset: int | None, max_bytes: int
) -> ConsoleBytes:
    """``ConsoleDriver.console_read`` over ``serial.log``."""
    try:
        with files.serial.open("rb") as log:
            size = os.fstat(log.fileno()).st_size
            if offset is None:
                begin = max(0, size - max_bytes)
            else:
                begin = offset if 0 <= offset <= size else 0
            log.seek(begin)
            return ConsoleBytes(generation, begin, log.read(max(0, min(max_bytes, size - begin))))
    except OSError:
        return ConsoleBytes(generation, 0, b"")


class ConsoleLink:
    """The agent's connection to one VM's console socket, made at the first input. What QEMU
    sends on it is read and dropped (output comes from ``serial.log``), so that the guest never
    waits on a full socket."""

    def __init__(self, files: VmFiles) -> None:
        self._files = files
        self._writer: asyncio.StreamWriter | None = None
        self._discard: asyncio.Task[None] | None = None

    def available(self) -> bool:
        """VMs launched by older agents (``-serial file:``) have no console socket."""
        return self._files.console.is_socket()

    async def write(self, data: bytes) -> None:
        try:
            if self._writer is None or self._writer.is_closing():
                self.close()
                reader, self._writer = await asyncio.open_unix_connection(self._files.console)
                self._discard = asyncio.create_task(_drop(reader), name="qemu-console-discard")
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            self.close()
            raise DriverError(f"console unreachable: {exc}", retryable=True) from exc

    def close(self) -> None:
        if self._discard is not None:
            self._discard.cancel()
            self._discard = None
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.close()
            self._writer = None


async def _drop(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass
