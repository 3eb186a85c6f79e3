"""What ``stratus up --driver qemu`` adds to a local cluster: the boot kit, a tiny size and the
built-in image ``tiny`` in the gallery."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path

from common.errors import StratusError
from common.waiting import Deadline, poll_sync

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "deploy" / "images" / "build-tiny.sh"
APT_LINE = (
    "apt-get install -y --no-install-recommends "
    "qemu-system-x86 qemu-utils busybox-static e2fsprogs lz4"
)
TINY_SIZE = ("Tiny", 1000, 96)
"""A test and demo size for the tiny image: 1 vCPU, 96 MiB (the kernel needs at least 80)."""
KIT_FILES = ("vmlinux", "initramfs.gz", "tiny.qcow2")


def ensure_boot_kit(boot_dir: Path) -> Path:
    """``boot_dir`` holding a boot kit, built with deploy/images/build-tiny.sh if missing."""
    if all((boot_dir / name).is_file() for name in KIT_FILES):
        return boot_dir
    missing = [tool for tool in ("qemu-system-x86_64", "qemu-img") if shutil.which(tool) is None]
    if missing:
        raise StratusError(f"the qemu driver needs {', '.join(missing)}: {APT_LINE}")
    if not BUILD_SCRIPT.is_file():
        raise StratusError(f"no boot kit in {boot_dir} and no {BUILD_SCRIPT} to build one")
    print(f"building the tiny guest into {boot_dir} (deploy/images/build-tiny.sh) ...")
    result = subprocess.run(
        [str(BUILD_SCRIPT), str(boot_dir)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StratusError(f"build-tiny.sh failed: {result.stderr.strip() or result.stdout}")
    return boot_dir


def scheduler_config(data_dir: Path, boot_dir: Path) -> Path:
    """A scheduler config with the tiny size and the built-in image ``tiny`` from the kit."""
    name, cpu_milli, mem_mib = TINY_SIZE
    path = data_dir / "scheduler-qemu.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'sizes = [{{ name = "{name}", cpu_milli = {cpu_milli}, mem_mib = {mem_mib} }}]\n'
        f'builtin_images = {{ tiny = "{boot_dir / "tiny.qcow2"}" }}\n'
    )
    return path


def stop_guests(agents_dir: Path, timeout_s: float = 5.0) -> int:
    """Stop the QEMU processes the local cluster's agents left running (agents never stop their
    VMs on exit); their disks stay, so the next ``stratus up`` starts them again. Returns how
    many were running."""
    pids = [pid for pid in _guest_pids(agents_dir) if _is_guest(pid, agents_dir)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = Deadline.after(timeout_s)
    for pid in pids:
        gone = partial(_gone, pid, agents_dir)
        if poll_sync(gone, timeout_s=deadline.remaining_s(), interval_s=0.05) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return len(pids)


def _guest_pids(agents_dir: Path) -> list[int]:
    pids = []
    for path in agents_dir.glob("*/qemu/vms/*/qemu.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(path.read_text().strip()))
    return pids


def _gone(pid: int, agents_dir: Path) -> bool | None:
    return None if _is_guest(pid, agents_dir) else True


def _is_guest(pid: int, agents_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z" and os.fsencode(agents_dir.resolve()) in cmdline
