"""The consoles of this host's VMs, over NATS: the agent that runs a VM serves its console, so
the scheduler never relays console bytes.

- Output: every ``POLL_S`` (and right after input), the new output of each VM the driver holds
  goes out as ``ConsoleOutput`` on ``stratus.console.<host>.<vm>.out``; a VM that left the host
  gets a ``ConsoleClosed`` there. Offsets let a reader splice the live output onto a tail.
- ``.tail`` requests get the VM's most recent output; ``.in`` requests type on its console
  (when the driver can: ``ConsoleReply.writable``).

Permissions (cli/natsconfig.py) keep a host to publishing its own VMs' output and to receiving
requests for its own VMs only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from common import codec, messages as m, subjects
from common.console_messages import ConsoleClosed, ConsoleOutput, ConsoleReply
from common.errors import DriverError
from hostagent.drivers.base import ConsoleBytes, ConsoleDriver

log = logging.getLogger(__name__)

POLL_S: Final = 0.1
CHUNK_BYTES: Final = 16 * 1024
"""Largest ``ConsoleOutput`` published; also what a VM first seen sends of its past output."""
MAX_CHUNKS_PER_POLL: Final = 16
"""A VM writing faster than this (256 KiB per poll) is caught up over several polls."""


class ConsoleRelay:
    def __init__(
        self,
        nc: Client,
        host_id: str,
        driver: ConsoleDriver,
        held: Callable[[], list[m.ObservedVm]],
    ) -> None:
        self._nc = nc
        self._host_id = host_id
        self._driver = driver
        self._held = held
        self._cursors: dict[str, tuple[int, int]] = {}
        """Per VM published: (generation, offset of the next byte to publish)."""
        self._wake = asyncio.Event()

    async def subscribe(self) -> None:
        await self._nc.subscribe(subjects.console_tail(self._host_id, "*"), cb=self._on_tail)
        await self._nc.subscribe(subjects.console_input(self._host_id, "*"), cb=self._on_input)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.pump()
            try:
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def pump(self) -> None:
        """Publish what each held VM wrote since the last pump; close the consoles of VMs gone."""
        held = {vm.name: vm.generation for vm in self._held()}
        for name in held:
            await self._publish_new(name)
        for name in [name for name in self._cursors if name not in held]:
            generation, _ = self._cursors.pop(name)
            closed = ConsoleClosed(vm=name, generation=generation, reason="vm left this host")
            subject = subjects.console_output(self._host_id, name)
            await self._nc.publish(subject, codec.encode(closed))

    async def _publish_new(self, name: str) -> None:
        cursor = self._cursors.get(name)
        offset = None if cursor is None else cursor[1]
        for _ in range(MAX_CHUNKS_PER_POLL):
            try:
                chunk = self._driver.console_read(name, offset, CHUNK_BYTES)
            except DriverError:
                return  # gone meanwhile: closed at the next pump
            if cursor is not None and chunk.generation != cursor[0] and chunk.offset != 0:
                chunk = self._driver.console_read(name, 0, CHUNK_BYTES)  # started again
            self._cursors[name] = cursor = (chunk.generation, chunk.end)
            offset = chunk.end
            if not chunk.data:
                return
            await self._nc.publish(
                subjects.console_output(self._host_id, name), codec.encode(_output(name, chunk))
            )

    async def _on_tail(self, msg: Msg) -> None:
        name = subjects.vm_of_console(msg.subject)
        try:
            request = codec.console_tail.decode(codec.empty_as_object(msg.data))
            chunk = self._driver.console_read(name, None, request.max_bytes)
        except msgspec.DecodeError as exc:
            return await _answer(msg, _error(m.ErrorCode.INVALID_REQUEST, str(exc)))
        except DriverError:
            return await _answer(msg, self._not_here(name))
        writable = self._driver.console_writable(name)
        await _answer(msg, ConsoleReply(output=_output(name, chunk), writable=writable))

    async def _on_input(self, msg: Msg) -> None:
        name = subjects.vm_of_console(msg.subject)
        try:
            request = codec.console_input.decode(msg.data)
        except msgspec.DecodeError as exc:
            return await _answer(msg, _error(m.ErrorCode.INVALID_REQUEST, str(exc)))
        if name not in {vm.name for vm in self._held()}:
            return await _answer(msg, self._not_here(name))
        if not self._driver.console_writable(name):
            detail = f"the console of vm {name} is output only on host {self._host_id}"
            return await _answer(msg, _error(m.ErrorCode.INVALID_STATE, detail))
        try:
            await self._driver.console_write(name, request.data)
        except DriverError as exc:
            return await _answer(msg, _error(m.ErrorCode.UNAVAILABLE, str(exc)))
        self._wake.set()  # the echo goes out now, not at the next poll
        await _answer(msg, ConsoleReply(writable=True))

    def _not_here(self, name: str) -> ConsoleReply:
        detail = f"vm {name} does not run on host {self._host_id}"
        return _error(m.ErrorCode.NOT_FOUND, detail)


def _output(name: str, chunk: ConsoleBytes) -> ConsoleOutput:
    return ConsoleOutput(vm=name, generation=chunk.generation, offset=chunk.offset, data=chunk.data)


def _error(code: m.ErrorCode, detail: str) -> ConsoleReply:
    return ConsoleReply(error=m.ErrorBody(code, detail))


async def _answer(msg: Msg, reply: ConsoleReply) -> None:
    if msg.reply:
        await msg.respond(codec.encode(reply))
