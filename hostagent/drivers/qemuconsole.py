"""A QEMU VM's serial console as the driver serves it: output read from ``serial.log`` (QEMU
logs every byte the guest writes, connected or not; offsets are file positions), input typed
through ``console.sock`` (a ``-chardev socket`` QEMU listens on).

The agent's console relay reads every running VM's output ten times a second
(hostagent/console.py); those reads also keep each ``serial.log`` bounded on disk
(hostagent/drivers/seriallog.py)."""

from __future__ import annotations

import asyncio
import contextlib

from common.errors import DriverError
from hostagent.drivers import seriallog
from hostagent.drivers.base import ConsoleBytes
from hostagent.drivers.qemuproc import VmFiles


def read_console(
    files: VmFiles, generation: int, offset: int | None, max_bytes: int
) -> ConsoleBytes:
    """``ConsoleDriver.console_read`` over ``serial.log``, trimming it when due."""
    try:
        with files.serial.open("rb") as log:
            if seriallog.trim_due(log.fileno()):
                seriallog.trim(files.serial)
            begin, data = seriallog.read_range(log.fileno(), offset, max_bytes)
            return ConsoleBytes(generation, begin, data)
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
