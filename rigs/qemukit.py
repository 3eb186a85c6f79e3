"""The QEMU boot kit the rigs, tests and benchmarks boot guests from: built once by
deploy/images/build-tiny.sh and cached, keyed by a hash of the build script and the guest files
(so editing them rebuilds the kit)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from common.errors import StratusError

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "deploy" / "images"
BUILD_SCRIPT = IMAGES / "build-tiny.sh"
APT_LINE = (
    "apt-get install -y --no-install-recommends "
    "qemu-system-x86 qemu-utils busybox-static e2fsprogs lz4"
)
NEEDED = ("qemu-system-x86_64", "qemu-img", "busybox", "mke2fs", "apt-get", "dpkg")


def missing_tools() -> list[str]:
    return [tool for tool in NEEDED if shutil.which(tool) is None]


def kit_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([BUILD_SCRIPT, *(IMAGES / "guest").iterdir()]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    configured = os.environ.get("STRATUS_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "stratus"


def boot_kit() -> Path:
    """The kit directory (vmlinux, initramfs.gz, tiny.qcow2), built on first use."""
    if missing := missing_tools():
        raise StratusError(f"QEMU guests need {', '.join(missing)}: {APT_LINE}")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    kit = root / f"boot-kit-{kit_hash()}"
    with (root / ".boot-kit.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (kit / "build.json").is_file():
            result = subprocess.run(
                [str(BUILD_SCRIPT), str(kit)], capture_output=True, text=True, timeout=600
            )
            if result.returncode != 0:
                raise StratusError(f"build-tiny.sh failed:\n{result.stdout}\n{result.stderr}")
    return kit
