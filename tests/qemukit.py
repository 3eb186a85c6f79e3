"""The QEMU boot kit for tests (rigs/qemukit.py builds and caches it).

Without QEMU (or the tools the build needs) the QEMU tests skip with the apt line to run; with
``STRATUS_REQUIRE_QEMU=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.errors import StratusError
from rigs import qemukit
from rigs.qemukit import APT_LINE, NEEDED

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
