"""``--wait``: follow a long operation to its end, with progress on a terminal (quiet
otherwise), and end with how it went: the final value, or ``ApiError`` saying why not."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, TextIO

from common import messages as m
from common.errors import ApiError
from common.image_messages import ImageInfo, ImageState

POLL_S = 0.2
FAILED = "failed"
TIMEOUT = "timeout"


class Progress:
    """One status line on ``out``, rewritten in place, when ``out`` is a terminal; nothing
    otherwise (a log file or a pipe gets only the outcome line)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._live = out.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        if self._live:
            self._out.write("\r" + text.ljust(self._width))
            self._out.flush()
            self._width = max(self._width, len(text))

    def clear(self) -> None:
        """Erase the status line, so the outcome line starts on a clean line."""
        if self._live and self._width:
            self._out.write("\r" + " " * self._width + "\r")
            self._out.flush()
            self._width = 0


class VmReader(Protocol):
    async def get_vm(self, name: str) -> m.VmInfo: ...


class ImageLister(Protocol):
    async def list_images(self) -> list[ImageInfo]: ...


# The states a VM passes through on its way to each goal; any other state ends the wait.
_ON_THE_WAY: dict[m.VmState, frozenset[m.VmState]] = {
    m.VmState.RUNNING: frozenset(
        {m.VmState.PENDING, m.VmState.SCHEDULED, m.VmState.STARTING, m.VmState.LOST}
    ),
    m.VmState.STOPPED: frozenset(
        {
            m.VmState.STOPPING,
            m.VmState.RUNNING,
            m.VmState.PENDING,
            m.VmState.SCHEDULED,
            m.VmState.STARTING,
            m.VmState.LOST,
        }
    ),
    m.VmState.DELETED: frozenset(set(m.VmState) - {m.VmState.DELETED}),
}


def _elapsed(start_s: float) -> str:
    return f"{time.monotonic() - start_s:.1f}s"


async def wait_vm(
    client: VmReader, name: str, goal: m.VmState, timeout_s: float, progress: Progress
) -> m.VmInfo | None:
    """Poll ``name`` until it reaches ``goal``; None when waiting for a delete and the VM is
    gone. ``ApiError(failed)`` if it ends elsewhere (with its reason), ``(timeout)`` if slow."""
    start_s = time.monotonic()
    try:
        while True:
            try:
                vm = await client.get_vm(name)
            except ApiError as exc:
                if goal is m.VmState.DELETED and exc.code == m.ErrorCode.NOT_FOUND:
                    return None
                raise
            if vm.state is goal:
                return vm
            why = f" ({vm.reason})" if vm.reason else ""
            if vm.state not in _ON_THE_WAY[goal]:
                raise ApiError(FAILED, f"vm '{name}' is {vm.state}, not {goal}{why}")
            if time.monotonic() - start_s >= timeout_s:
                detail = f"vm '{name}' is still {vm.state}{why} after {timeout_s:g}s"
                raise ApiError(TIMEOUT, detail)
            progress.show(f"{name}: {vm.state}{why} {_elapsed(start_s)}")
            await asyncio.sleep(POLL_S)
    finally:
        progress.clear()


async def wait_image(
    client: ImageLister, name: str, timeout_s: float, progress: Progress
) -> ImageInfo:
    """Poll the gallery until image ``name`` is available; ``ApiError(failed)`` with its reason
    if it fails (a capture that failed on the host), ``(timeout)`` if slow."""
    start_s = time.monotonic()
    try:
        while True:
            found = [image for image in await client.list_images() if image.name == name]
            if not found:
                raise ApiError(FAILED, f"image {name} is no longer listed")
            image = max(found, key=lambda image: image.version)
            if image.state is ImageState.AVAILABLE:
                return image
            if image.state is ImageState.FAILED:
                raise ApiError(FAILED, f"image {name}: {image.reason or 'failed'}")
            if time.monotonic() - start_s >= timeout_s:
                raise ApiError(TIMEOUT, f"image {name} is still {image.state} after {timeout_s:g}s")
            progress.show(f"image {name}: {image.state} {_elapsed(start_s)}")
            await asyncio.sleep(POLL_S)
    finally:
        progress.clear()
