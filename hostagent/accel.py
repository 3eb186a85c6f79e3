"""Which QEMU accelerator this host uses: KVM when it really works, TCG otherwise.

``/dev/kvm`` may open and still be useless (a nested device on which guests hang or die with
"emulation failure"), so ``auto`` boots the boot kit's kernel once under KVM with the
``stratus.selftest`` flag, time-boxed: the initramfs prints ``STRATUS-SELFTEST-OK`` and powers
off at once. A pass means KVM; a hang, an error or a timeout means TCG. The verdict is cached in
the agent's data directory for the current host boot (``/proc/sys/kernel/random/boot_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import msgspec

from common.errors import DriverError

log = logging.getLogger(__name__)

Accel = Literal["kvm", "tcg"]
SELFTEST_MARKER = b"STRATUS-SELFTEST-OK"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


class AccelVerdict(msgspec.Struct):
    boot_id: str
    accel: Accel
    detail: str = ""


def _boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


async def resolve_accel(
    wanted: Literal["auto", "kvm", "tcg"],
    *,
    qemu_binary: str,
    kernel: Path,
    initramfs: Path,
    cache_path: Path,
    timeout_s: float,
) -> Accel:
    """The accelerator to use; ``auto`` runs (or reuses) the self-test."""
    if wanted != "auto":
        return wanted
    boot_id = _boot_id()
    cached = _read_cache(cache_path)
    if cached is not None and boot_id and cached.boot_id == boot_id:
        log.info("accelerator from cache accel=%s detail=%s", cached.accel, cached.detail)
        return cached.accel
    accel, detail = await kvm_selftest(qemu_binary, kernel, initramfs, timeout_s)
    log.info("accelerator chosen accel=%s detail=%s", accel, detail)
    _write_cache(cache_path, AccelVerdict(boot_id, accel, detail))
    return accel


def _write_cache(path: Path, verdict: AccelVerdict) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(msgspec.json.encode(verdict))


def _read_cache(path: Path) -> AccelVerdict | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=AccelVerdict)
    except (OSError, msgspec.DecodeError):
        return None


async def kvm_selftest(
    qemu_binary: str, kernel: Path, initramfs: Path, timeout_s: float
) -> tuple[Accel, str]:
    """Boot the kit's kernel under KVM for at most ``timeout_s``; ("kvm", ...) if it worked."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not usable"
    with tempfile.TemporaryDirectory(prefix="stratus-kvm-") as tmp:
        serial = Path(tmp) / "serial.log"
        args = [
            *("-accel", "kvm", "-m", "128", "-nodefaults", "-no-user-config"),
            *("-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initramfs)),
            *("-append", "console=ttyS0 quiet panic=-1 stratus.selftest"),
            *("-serial", f"file:{serial}"),
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                qemu_binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise DriverError(f"cannot run {qemu_binary}: {exc}", retryable=False) from exc
        try:
            async with asyncio.timeout(timeout_s):
                _, stderr = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return "tcg", f"kvm self-test did not finish within {timeout_s:g}s"
        output = serial.read_bytes() if serial.exists() else b""
    if SELFTEST_MARKER in output:
        return "kvm", "kvm self-test passed"
    why = stderr.decode(errors="replace").strip().splitlines()
    return "tcg", f"kvm self-test failed: {why[-1] if why else f'exit {proc.returncode}'}"
