"""A small QMP client (QEMU Machine Protocol) over a unix socket, in plain asyncio + JSON.

One connection per VM. Commands are answered in order; asynchronous events (``STOP``,
``RESUME``, ``SHUTDOWN``, ...) go to a callback. When QEMU exits the socket closes: pending
commands fail with :class:`QmpClosed` and :attr:`QmpClient.closed` is set, which is how the
driver learns at once that a VM's process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from common.errors import StratusError

log = logging.getLogger(__name__)

JsonObject = dict[str, object]

SUN_PATH_MAX = 107
"""Longest unix socket path the kernel accepts (sun_path is 108 bytes with the NUL)."""
READ_LIMIT = 1 << 20


class QmpError(StratusError):
    """QEMU answered a command with an error, or the connection failed."""


class QmpClosed(QmpError):
    """The QMP connection is closed: QEMU exited (or was killed)."""


async def _open(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``path``; a path longer than sun_path is reached through its directory's fd."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return await asyncio.open_unix_connection(str(path), limit=READ_LIMIT)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{dir_fd}/{path.name}"
        return await asyncio.open_unix_connection(short, limit=READ_LIMIT)
    finally:
        os.close(dir_fd)


class QmpClient:
    def __init__(self, on_event: Callable[[str, JsonObject], None] | None = None) -> None:
        self._on_event = on_event
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[JsonObject]] = {}
        self._reading: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        path: Path,
        *,
        timeout_s: float = 5.0,
        on_event: Callable[[str, JsonObject], None] | None = None,
    ) -> QmpClient:
        """Connect, read the greeting and leave capabilities negotiation mode."""
        client = cls(on_event)
        try:
            async with asyncio.timeout(timeout_s):
                client._reader, client._writer = await _open(path)
                greeting = await client._read_message()
                for _ in range(STALE_MAX):  # what QEMU still owed a client that went away
                    if "QMP" in greeting or not _stale(greeting):
                        break
                    greeting = await client._read_message()
                if "QMP" not in greeting:
                    raise QmpError(f"unexpected QMP greeting: {greeting!r}")
                client._reading = asyncio.create_task(client._run_reader(), name=f"qmp-{path}")
                await client.execute("qmp_capabilities")
        except (OSError, TimeoutError, ValueError) as exc:
            await client.close()
            raise QmpError(f"cannot connect to QMP at {path}: {exc!r}") from exc
        except QmpError:
            await client.close()
            raise
        return client

    async def _read_message(self) -> JsonObject:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            raise QmpClosed("QMP connection closed")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"malformed QMP message: {line!r}")
        return message

    async def _run_reader(self) -> None:
        try:
            while True:
                message = await self._read_message()
                if "event" in message:
                    self._dispatch_event(message)
                    continue
                ident = message.get("id")
                future = self._pending.pop(ident, None) if isinstance(ident, int) else None
                if future is not None and not future.done():
                    future.set_result(message)
        except (QmpError, OSError, ValueError) as exc:
            log.debug("qmp reader ended error=%r", exc)
        finally:
            self._fail_pending()
            self.closed.set()

    def _dispatch_event(self, message: JsonObject) -> None:
        if self._on_event is None:
            return
        data = message.get("data")
        self._on_event(str(message["event"]), data if isinstance(data, dict) else {})

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(QmpClosed("QMP connection closed"))
        self._pending.clear()

    async def execute(
        self, command: str, arguments: JsonObject | None = None, *, timeout_s: float = 5.0
    ) -> object:
        """Run ``command``; return its ``return`` value or raise QmpError.

        The command is written before the first await, so two calls made in a row reach QEMU
        in that order.
        """
        if self._writer is None or self.closed.is_set():
            raise QmpClosed("QMP connection closed")
        ident = next(self._ids)
        request: JsonObject = {"execute": command, "id": ident}
        if arguments:
            request["arguments"] = arguments
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            self._writer.write(json.dumps(request).encode() + b"\n")
        except (OSError, RuntimeError) as exc:
            self._pending.pop(ident, None)
            raise QmpClosed(f"QMP write failed: {exc!r}") from exc
        try:
            async with asyncio.timeout(timeout_s):
                reply = await future
        except TimeoutError as exc:
            self._pending.pop(ident, None)
            raise QmpError(f"QMP {command} unanswered after {timeout_s}s") from exc
        if "error" in reply:
            raise QmpError(f"QMP {command} failed: {reply['error']}")
        return reply.get("return")

    async def query_status(self) -> str:
        """The run state (``running``, ``paused``, ``prelaunch``, ``shutdown``, ...)."""
        result = await self.execute("query-status")
        if isinstance(result, dict):
            return str(result.get("status", "unknown"))
        return "unknown"

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
            self._reading = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await self._writer.wait_closed()
            self._writer = None
        self._fail_pending()
        self.closed.set()


STALE_MAX = 64
"""Messages skipped before the greeting at most."""


def _stale(message: JsonObject) -> bool:
    """A reply or event QEMU wrote after its previous client went away (a command in flight
    when an agent closed its connection): it comes before the next client's greeting."""
    return "return" in message or "error" in message or "event" in message
