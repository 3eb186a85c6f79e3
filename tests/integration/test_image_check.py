"""The scheduler's check of an uploaded image against a real object store: it streams the bytes
(never holds a whole image in memory) and refuses bytes that are not what their name says."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import pytest
from nats.aio.client import Client

from common.image_messages import UploadImage
from common.imagestore import image_bucket, put_image
from scheduler.shell.gallery import check_upload

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _raw_disk(path: Path, size_bytes: int) -> Path:
    """A raw disk image: an MBR boot signature, then zeros and a little noise."""
    with path.open("wb") as file:
        sector = bytearray(512)
        sector[510:512] = b"\x55\xaa"
        file.write(sector)
        block = bytes(range(256)) * 4096  # 1 MiB
        written = 512
        while written < size_bytes:
            chunk = block[: size_bytes - written]
            file.write(chunk)
            written += len(chunk)
    return path


async def test_checking_a_large_upload_streams_it(nc: Client, tmp_path: Path) -> None:
    size = 48 * MIB
    sha256, stored = await put_image(nc.jetstream(), _raw_disk(tmp_path / "big.raw", size))
    assert stored == size
    upload = UploadImage(name="big", sha256=sha256, size_bytes=size)
    tracemalloc.start()
    try:
        checked = await check_upload(nc.jetstream(), upload)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(checked, UploadImage) and checked.format == "raw"
    assert peak_bytes < 8 * MIB, f"the check held {peak_bytes / MIB:.1f} MiB"


async def test_bytes_that_do_not_match_their_name_are_refused(nc: Client) -> None:
    data = b"\x00" * 510 + b"\x55\xaa" + b"\x01" * 1536
    claimed = hashlib.sha256(b"something else").hexdigest()
    bucket = await image_bucket(nc.jetstream())
    await bucket.put(claimed, data)
    checked = await check_upload(
        nc.jetstream(), UploadImage(name="liar", sha256=claimed, size_bytes=len(data))
    )
    assert isinstance(checked, str) and "sha256" in checked
