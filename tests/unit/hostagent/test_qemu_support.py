"""The qemu driver's helpers: the accelerator choice and the host's image cache."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from pathlib import Path

import pytest

from common.config import AgentConfig
from common.errors import ConfigError, DriverError
from hostagent.accel import resolve_accel
from hostagent.disks import run_qemu_img
from hostagent.images import ImageCache
from hostagent.qemusetup import check_host
from tests.qemukit import boot_kit, require_qemu


async def test_an_explicit_accelerator_needs_no_self_test(tmp_path: Path) -> None:
    cache = tmp_path / "accel.json"
    for wanted in ("kvm", "tcg"):
        accel = await resolve_accel(
            wanted,
            qemu_binary="no-such-qemu",
            kernel=tmp_path / "none",
            initramfs=tmp_path / "none",
            cache_path=cache,
            timeout_s=0.1,
        )
        assert accel == wanted
    assert not cache.exists()


@pytest.mark.timeout(60)
async def test_auto_runs_a_time_boxed_self_test_once_per_host_boot(tmp_path: Path) -> None:
    kit = boot_kit()
    cache = tmp_path / "accel.json"
    kwargs = {
        "qemu_binary": "qemu-system-x86_64",
        "kernel": kit / "vmlinux",
        "initramfs": kit / "initramfs.gz",
        "cache_path": cache,
        "timeout_s": 4.0,
    }
    started = time.monotonic()
    first = await resolve_accel("auto", **kwargs)  # type: ignore[arg-type]
    assert first in ("kvm", "tcg")
    assert time.monotonic() - started < 30, "time-boxed"
    assert cache.exists()
    second = await resolve_accel("auto", **kwargs)  # type: ignore[arg-type]
    assert second == first, "cached for this host boot"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_images_come_from_the_boot_kit_or_are_fetched_once(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "tiny.qcow2").write_bytes(b"builtin bytes")
    payload = b"gallery bytes"
    fetched: list[str] = []

    async def fetch(digest: str, dest: Path) -> None:
        fetched.append(digest)
        await asyncio.sleep(0.01)
        await asyncio.to_thread(dest.write_bytes, payload)

    cache = ImageCache(tmp_path / "cache", kit, fetch)
    assert await cache.resolve("tiny", "") == kit / "tiny.qcow2"
    assert await cache.resolve("tiny", sha(b"builtin bytes")) == kit / "tiny.qcow2"
    paths = await asyncio.gather(*(cache.resolve("app", sha(payload)) for _ in range(3)))
    assert set(paths) == {tmp_path / "cache" / sha(payload)}
    assert fetched == [sha(payload)], "one download for concurrent starts"
    assert paths[0].read_bytes() == payload


async def test_bad_bytes_and_unknown_images_are_driver_errors(tmp_path: Path) -> None:
    async def fetch(digest: str, dest: Path) -> None:
        await asyncio.to_thread(dest.write_bytes, b"something else")

    cache = ImageCache(tmp_path / "cache", None, fetch)
    with pytest.raises(DriverError) as mismatch:
        await cache.resolve("app", sha(b"expected"))
    assert "expected" in str(mismatch.value) and mismatch.value.retryable
    assert list((tmp_path / "cache").iterdir()) == [], "nothing half-written is kept"
    with pytest.raises(DriverError) as unknown:
        await cache.resolve("tiny", "")
    assert "no built-in copy" in str(unknown.value)


def test_an_agent_without_qemu_or_boot_kit_says_what_to_install(tmp_path: Path) -> None:
    missing_qemu = AgentConfig(driver="qemu", qemu_binary="no-such-qemu", boot_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install"):
        check_host(missing_qemu)
    if shutil.which("qemu-system-x86_64") and shutil.which("qemu-img"):
        with pytest.raises(ConfigError, match=r"build-tiny\.sh"):
            check_host(AgentConfig(driver="qemu", boot_dir=str(tmp_path)))


async def test_a_full_disk_is_a_retryable_failure_a_bad_request_is_not() -> None:
    """A start whose disk cannot be written because the host's disk is full is retried on
    another host (or later); a VM failed for good by a full disk was an acknowledged VM lost
    (the chaos campaign's QEMU part, seed 11: a host's VMs moved onto a full disk)."""
    require_qemu()
    with pytest.raises(DriverError) as full:  # /dev/full: every write fails with ENOSPC
        await run_qemu_img("create", "-q", "-f", "qcow2", "/dev/full", "1M")
    assert full.value.retryable, full.value
    with pytest.raises(DriverError) as bad:
        await run_qemu_img("create", "-q", "-f", "qcow2", "/dev/null", "not-a-size")
    assert not bad.value.retryable, bad.value
