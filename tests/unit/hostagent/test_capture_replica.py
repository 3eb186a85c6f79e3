"""A replicated disk is captured from this host's copy of it (it has no host-local file)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from common.errors import DriverError
from hostagent.disks import DiskStore
from hostagent.images import ImageCache


def test_a_replica_copy_is_flattened_and_a_missing_disk_says_where_to_capture(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "replicas" / "vm-1-os.qcow2"
    copy.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(copy), "4M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x7e 0 64k", str(copy)], check=True,
                   capture_output=True)  # fmt: skip
    store = DiskStore(tmp_path / "disks", ImageCache(tmp_path / "images", tmp_path))
    dest = tmp_path / "captured.qcow2"
    asyncio.run(store.flatten("vm-1-os", dest, copy))
    read = subprocess.run(["qemu-io", "-c", "read -P 0x7e 0 64k", str(dest)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "verification failed" not in read.stdout
    with pytest.raises(DriverError, match="captured on a host holding one of its copies"):
        asyncio.run(store.flatten("vm-2-os", tmp_path / "other.qcow2"))
