"""Capture: flatten a stopped VM's OS disk into one qcow2, store it, report it to the scheduler.

The scheduler sends ``CaptureDisk`` (again every few seconds until the image is available), so
a capture is done once per image name and a repeated command only reports the result again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats.errors
from nats.aio.client import Client

from common import codec, subjects
from common.errors import DriverError
from common.ids import HostId
from common.image_messages import ImageCaptured
from common.imagestore import ImageStoreError, stage_image
from common.messages import CaptureDisk
from hostagent.drivers.base import HypervisorDriver
from hostagent.drivers.qemu import QemuDriver

log = logging.getLogger(__name__)

REPORT_TIMEOUT_S = 5.0


class Capturer:
    def __init__(self, nc: Client, host_id: HostId, driver: HypervisorDriver, work_dir: Path):
        self._nc = nc
        self._host_id = host_id
        self._driver = driver
        self._work_dir = work_dir
        self._done: dict[str, ImageCaptured] = {}
        self.replica_file: Callable[[str], Path | None] = lambda _disk_id: None
        """The file of this host's copy of a replicated disk, if it holds one (a replicated
        disk is captured from a host that holds a copy of it)."""

    async def capture(self, command: CaptureDisk, *, running: bool) -> None:
        result = self._done.get(command.image)
        if result is None:
            result = await self._capture(command, running=running)
            self._done[command.image] = result
        await self._report(result)

    async def _capture(self, command: CaptureDisk, *, running: bool) -> ImageCaptured:
        def failed(why: str) -> ImageCaptured:
            log.error("capture failed vm=%s image=%s error=%s", command.name, command.image, why)
            return ImageCaptured(
                image=command.image, vm=command.name, host_id=self._host_id, error=why
            )

        if not isinstance(self._driver, QemuDriver):
            return failed(f"the {self._driver.name} driver keeps no disks to capture")
        if running:
            return failed(f"vm {command.name} runs again on {self._host_id}")
        dest = self._work_dir / f".capture-{command.image}.qcow2"
        try:
            await asyncio.to_thread(self._work_dir.mkdir, parents=True, exist_ok=True)
            source = self.replica_file(command.disk_id)
            await self._driver.disks.flatten(command.disk_id, dest, source)
            staged = await stage_image(self._nc.jetstream(), dest)
        except (DriverError, ImageStoreError, nats.errors.Error, OSError, TimeoutError) as exc:
            return failed(str(exc) or repr(exc))
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(dest.unlink)
        log.info(
            "vm captured vm=%s image=%s sha256=%s bytes=%d",
            command.name,
            command.image,
            staged.sha256,
            staged.size_bytes,
        )
        return ImageCaptured(
            image=command.image,
            vm=command.name,
            host_id=self._host_id,
            sha256=staged.sha256,
            size_bytes=staged.size_bytes,
            nuid=staged.nuid,
        )

    async def _report(self, result: ImageCaptured) -> None:
        try:
            reply = await self._nc.request(
                subjects.host_captured(self._host_id),
                codec.encode(result),
                timeout=REPORT_TIMEOUT_S,
            )
            answer = codec.image_reply.decode(reply.data)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
            log.warning("capture report unanswered image=%s error=%r", result.image, exc)
            return
        if answer.error is not None:
            log.error(
                "capture report rejected image=%s code=%s detail=%s",
                result.image,
                answer.error.code,
                answer.error.detail,
            )
