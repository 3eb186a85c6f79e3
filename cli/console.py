"""``stratus vm logs`` and ``stratus vm console``: a VM's serial console, served over NATS by the
agent of the host running it (found with ``vm get``).

``vm console`` prints the recent output, then follows it live and sends what is typed (where
the driver relays input: QEMU yes). On a terminal the keyboard goes raw, so keys such as
Ctrl-C reach the guest, and Ctrl-] detaches; otherwise stdin is sent as it comes and its end
detaches. Live output is spliced onto the tail by offset, so no byte shows twice or goes
missing in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

import msgspec
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from cli import output
from cli.client import StratusClient
from cli.verbs import Outcome
from common import codec
from common.console import console_host
from common.console_messages import (
    MAX_CONSOLE_INPUT_BYTES,
    MAX_CONSOLE_TAIL_BYTES,
    ConsoleClosed,
    ConsoleOutput,
)

DETACH: Final = b"\x1d"
"""Ctrl-]: leaves ``vm console`` (as in telnet and virsh)."""
ATTACH_TAIL_BYTES: Final = 4096
"""The recent output ``vm console`` shows first: about a screen."""


@dataclass
class Splice:
    """Joins console output pieces into one stream: a piece (or its start) already shown is
    skipped; a piece of a new generation (the VM started again) is shown whole."""

    generation: int | None = None
    next_offset: int | None = None

    def accept(self, piece: ConsoleOutput) -> bytes:
        if self.next_offset is None or piece.generation != self.generation:
            self.generation, self.next_offset = piece.generation, piece.end
            return piece.data
        if piece.end <= self.next_offset:
            return b""
        skip = max(0, self.next_offset - piece.offset)
        self.next_offset = piece.end
        return piece.data[skip:]


def last_lines(data: bytes, count: int) -> bytes:
    """The last ``count`` lines of ``data`` (a last line without a newline counts)."""
    if count <= 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


class LogsView(msgspec.Struct, kw_only=True):
    vm: str
    host: str
    generation: int
    offset: int
    end: int
    text: str


def _write(out: BinaryIO, data: bytes) -> None:
    if data:
        out.write(data)
        out.flush()


async def vm_logs(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.get_vm(args.name)
    host = console_host(vm)
    follow = await client.console_follow(host, vm.name) if args.follow else None
    try:
        reply = await client.console_tail(host, vm.name, MAX_CONSOLE_TAIL_BYTES)
        assert reply.output is not None
        piece = reply.output
        data = piece.data if args.tail is None else last_lines(piece.data, args.tail)
        if args.output == "json" and follow is None:
            text = data.decode(errors="replace")
            view = LogsView(vm=vm.name, host=host, generation=piece.generation, offset=piece.end
                            - len(data), end=piece.end, text=text)  # fmt: skip
            return Outcome(output.to_json(view))
        out = sys.stdout.buffer
        _write(out, data)
        if follow is None:
            return Outcome("")
        splice = Splice()
        splice.accept(piece)
        return Outcome("", await _print_output(follow, splice, out))
    finally:
        if follow is not None:
            await follow.unsubscribe()


async def vm_console(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.get_vm(args.name)
    host = console_host(vm)
    follow = await client.console_follow(host, vm.name)
    try:
        reply = await client.console_tail(host, vm.name, ATTACH_TAIL_BYTES)
        assert reply.output is not None
        splice, out = Splice(), sys.stdout.buffer
        _write(out, splice.accept(reply.output))
        if not reply.writable or args.no_input:
            why = "" if args.no_input else " (this host's driver relays no input)"
            print(f"following the console of {vm.name} on {host}{why}", file=sys.stderr)
            return Outcome("", await _print_output(follow, splice, out))
        return Outcome("", await _interact(client, host, vm.name, follow, splice, out))
    finally:
        await follow.unsubscribe()


async def _print_output(follow: Subscription, splice: Splice, out: BinaryIO) -> str:
    """Print live output until the console closes; the reason."""
    while True:
        try:
            msg = await follow.next_msg(timeout=3600)
        except NatsTimeoutError:
            continue
        try:
            event = codec.console_event.decode(msg.data)
        except msgspec.DecodeError:
            continue
        match event:
            case ConsoleOutput():
                _write(out, splice.accept(event))
            case ConsoleClosed(vm=name, reason=reason):
                return f"console of {name} closed: {reason}"


async def _interact(
    client: StratusClient,
    host: str,
    name: str,
    follow: Subscription,
    splice: Splice,
    out: BinaryIO,
) -> str:
    stdin = sys.stdin
    keyboard = stdin.isatty()
    if keyboard:
        print(f"attached to {name} on {host}: Ctrl-] detaches", file=sys.stderr)
    with _raw_terminal(stdin.fileno() if keyboard else None):
        printing = asyncio.create_task(_print_output(follow, splice, out))
        typing = asyncio.create_task(_send_input(client, host, name, stdin.fileno()))
        done, _ = await asyncio.wait({printing, typing}, return_when=asyncio.FIRST_COMPLETED)
        for task in (printing, typing):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return next(iter(done)).result()


async def _send_input(client: StratusClient, host: str, name: str, fd: int) -> str:
    """Send what is read from ``fd`` until Ctrl-] or its end; the reason."""
    chunks = _read_in_background(fd)
    while True:
        data = await chunks.get()
        if not data:
            return f"detached from {name} (end of input)"
        before, detach, _ = data.partition(DETACH)
        if before:
            await client.console_type(host, name, before)
        if detach:
            return f"detached from {name}"


def _read_in_background(fd: int) -> asyncio.Queue[bytes]:
    """Chunks read from ``fd`` by a daemon thread (it may block in ``read`` at exit); portable
    where asyncio cannot watch a console or pipe (Windows). b"" marks the end."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                data = os.read(fd, MAX_CONSOLE_INPUT_BYTES)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(chunks.put_nowait, data)
            if not data:
                return

    threading.Thread(target=read, name="console-input", daemon=True).start()
    return chunks


@contextlib.contextmanager
def _raw_terminal(fd: int | None) -> Iterator[None]:
    """The terminal in raw mode (POSIX) for the duration; as it is elsewhere."""
    if fd is None or sys.platform == "win32":
        yield
        return
    import termios  # POSIX only: imported here, so the CLI still runs on Windows
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
