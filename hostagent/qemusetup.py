"""Opening the qemu driver: check the host, choose the accelerator, re-adopt running VMs.

Layout under ``<data_dir>/<host_id>/qemu/``: ``vms/<name>/`` (per-VM files), ``disks/``
(host-local disks), ``images/`` (gallery images by digest) and ``accel.json`` (the accelerator
verdict for this host boot).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from common.config import AgentConfig
from common.errors import ConfigError, DriverError
from common.ids import HostId
from common.imagestore import ImageStoreError, fetch_image
from common.resources import Resources
from hostagent.accel import resolve_accel
from hostagent.drivers.qemu import QemuDriver
from hostagent.drivers.qemuproc import QemuSettings
from hostagent.images import ImageCache, ImageFetcher
from hostagent.netlinux import uses_kernel_networks

log = logging.getLogger(__name__)

APT_HINT = "apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils"
BUILD_HINT = "build it with deploy/images/build-tiny.sh DIR and pass --boot-dir DIR"


def qemu_root(config: AgentConfig, host: HostId) -> Path:
    return Path(config.data_dir) / host / "qemu"


def check_host(config: AgentConfig) -> tuple[Path, Path, Path]:
    """The boot kit's directory, kernel and initramfs; ConfigError saying what to install when
    something is missing."""
    if shutil.which(config.qemu_binary) is None:
        raise ConfigError(f"{config.qemu_binary} not found: {APT_HINT}")
    if shutil.which("qemu-img") is None:
        raise ConfigError(f"qemu-img not found: {APT_HINT}")
    if not config.boot_dir:
        raise ConfigError(f"the qemu driver needs a boot kit (boot_dir): {BUILD_HINT}")
    kernel = Path(config.boot_dir) / "vmlinux"
    initramfs = Path(config.boot_dir) / "initramfs.gz"
    for path in (kernel, initramfs):
        if not path.is_file():
            raise ConfigError(f"{path} is missing: {BUILD_HINT}")
    return Path(config.boot_dir).resolve(), kernel.resolve(), initramfs.resolve()


def nats_fetcher(nc: Client) -> ImageFetcher:
    async def fetch(sha256: str, dest: Path) -> None:
        try:
            await fetch_image(nc.jetstream(), sha256, dest)
        except (ImageStoreError, nats.errors.Error, TimeoutError) as exc:
            raise DriverError(f"cannot fetch image {sha256}: {exc!r}", retryable=True) from exc

    return fetch


async def open_qemu_driver(
    config: AgentConfig, host: HostId, capacity: Resources, nc: Client | None
) -> QemuDriver:
    boot_dir, kernel, initramfs = check_host(config)
    root = qemu_root(config, host).resolve()
    accel = await resolve_accel(
        config.accel,
        qemu_binary=config.qemu_binary,
        kernel=kernel,
        initramfs=initramfs,
        cache_path=root / "accel.json",
        timeout_s=config.kvm_selftest_timeout_s,
    )
    settings = QemuSettings(
        qemu_binary=config.qemu_binary,
        accel=accel,
        kernel=kernel,
        initramfs=initramfs,
        boot_timeout_s=config.boot_timeout_s,
        stop_timeout_s=config.stop_timeout_s,
        max_concurrent_boots=config.max_concurrent_boots,
        nics=uses_kernel_networks(config),
    )
    cache = ImageCache(
        root / "images",
        boot_dir,
        nats_fetcher(nc) if nc is not None else None,
    )
    driver = QemuDriver(
        settings, root, cache, capacity=capacity, cpu_overcommit=config.cpu_overcommit or 1.0
    )
    adopted = await driver.adopt()
    log.info("qemu driver ready accel=%s root=%s adopted=%d", accel, root, len(adopted))
    return driver
