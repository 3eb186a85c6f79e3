"""The QEMU boot kit for tests (rigs/qemukit.py builds and caches it).

Without QEMU (or the tools the build needs) the QEMU tests skip with the apt line to run; with
``STRATUS_REQUIRE_QEMU=1`` (CI) they fail instead.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

from common.errors import StratusError
from hostagent.drivers.qemu import QemuDriver
from rigs import qemukit
from rigs.qemukit import APT_LINE, NEEDED
from tests.waiting import wait_until

__all__ = ["APT_LINE", "NEEDED", "boot_kit", "require_qemu"]


def require_qemu() -> None:
    missing = qemukit.missing_tools()
    if not missing:
        return
    message = f"QEMU tests need {', '.join(missing)}: {APT_LINE}"
    if os.environ.get("STRATUS_REQUIRE_QEMU") == "1":
        pytest.fail(message)
    pytest.skip(message)


def boot_kit() -> Path:
    """The kit directory (vmlinux, initramfs.gz, tiny.qcow2), built on first use."""
    require_qemu()
    try:
        return qemukit.boot_kit()
    except StratusError as error:
        pytest.fail(str(error))


_marks = itertools.count()


async def in_guest(driver: QemuDriver, vm: str, command: str, timeout_s: float = 60.0) -> str:
    """Type ``command`` on ``vm``'s console; its output up to an end mark. Typed again only
    while nothing echoes it (the console's shell is not there yet)."""
    mark = f"done{next(_marks)}"
    pattern = re.compile(rf"{mark}-(\d+)".encode())
    start = driver.console_read(vm, None, 0).end
    result: list[bytes] = []

    async def answered() -> bool:
        text = driver.console_read(vm, start, 1 << 20).data
        if (found := pattern.search(text)) is not None:
            result.append(text[: found.end()])
            return True
        if mark.encode() not in text:
            await driver.console_write(vm, f'{command}; echo "{mark}"-$?\n'.encode())
        return False

    await wait_until(answered, timeout_s=timeout_s, interval_s=0.5, message=command)
    return result[0].decode(errors="replace").replace("\r", "")
