"""Image bytes in the JetStream object store: one object per image, named by its sha256 (hex).

Uploaders (the CLI, an agent capturing a VM) put the object, then ask the scheduler to register
it; agents fetch by digest into their cache. The object store checks each object's digest on
read, and the name being the digest makes uploads idempotent and shares identical images.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Final

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from common import subjects
from common.errors import StratusError
from common.images import HEADER_BYTES, file_sha256

HEAD_BYTES: Final = HEADER_BYTES
IMAGES_STREAM: Final = OBJ_STREAM_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET)


class ImageStoreError(StratusError):
    """The object store could not store or return an image."""


async def image_bucket(
    js: JetStreamContext, *, create: bool = True, replicas: int = 1
) -> ObjectStore:
    """The images bucket; created (with ``replicas``) when missing and ``create`` is set. The
    scheduler, which knows the configured replica count, raises an existing bucket's to it."""
    try:
        return await js.object_store(subjects.IMAGES_BUCKET)
    except (BucketNotFoundError, NotFoundError) as exc:
        if not create:
            raise ImageStoreError("the images bucket does not exist") from exc
    config = ObjectStoreConfig(
        bucket=subjects.IMAGES_BUCKET, storage=StorageType.FILE, replicas=replicas
    )
    return await js.create_object_store(subjects.IMAGES_BUCKET, config=config)


async def put_image(js: JetStreamContext, path: Path) -> tuple[str, int]:
    """Store ``path`` (unless an object with its digest exists); return (sha256, size)."""
    sha256 = await asyncio.to_thread(file_sha256, path)
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    bucket = await image_bucket(js)
    try:
        info = await bucket.get_info(sha256)
        if info.size == size and not info.deleted:
            return sha256, size
    except (ObjectNotFoundError, NotFoundError):
        pass
    file = await asyncio.to_thread(path.open, "rb")
    try:
        await bucket.put(sha256, file)
    finally:
        file.close()
    return sha256, size


async def fetch_image(js: JetStreamContext, sha256: str, dest: Path) -> None:
    """Write the object ``sha256`` to ``dest``, checking that its bytes have that sha256."""
    file = await asyncio.to_thread(dest.open, "wb")
    try:
        await _read_object(js, sha256, lambda data: file.write(data))
    finally:
        file.close()


class _Head:
    """Keeps an object's first ``head_bytes``."""

    def __init__(self, head_bytes: int) -> None:
        self.head = bytearray()
        self._head_bytes = head_bytes

    def write(self, data: bytes) -> None:
        missing = self._head_bytes - len(self.head)
        if missing > 0:
            self.head += data[:missing]


async def read_image_head(js: JetStreamContext, sha256: str) -> tuple[bytes, int]:
    """The object's first bytes (for format checks) and its size. The object is read whole
    (its sha256 must be ``sha256``, the name it was stored under: an uploader cannot register
    other bytes than it named) but one chunk at a time, never held whole."""
    sink = _Head(HEAD_BYTES)
    size_bytes = await _read_object(js, sha256, sink.write)
    return bytes(sink.head), size_bytes


async def _read_object(js: JetStreamContext, sha256: str, write: Callable[[bytes], object]) -> int:
    """Pass each chunk of the object ``sha256`` to ``write``, in order; its size. Chunks are
    read with stream message gets (``$JS.API.STREAM.MSG.GET``), not a consumer: a role allowed
    to create consumers could aim one's deliveries at any subject (the deliver subject is not
    checked against its creator's permissions), so no role but the scheduler's and admin's
    may. Raises ``ImageStoreError`` when the object is missing, short, or not ``sha256``."""
    try:
        bucket = await image_bucket(js, create=False)
        info = await bucket.get_info(sha256)
    except (ObjectNotFoundError, NotFoundError) as exc:
        raise ImageStoreError(f"no image object {sha256} in the gallery") from exc
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET, obj=info.nuid)
    digest, size_bytes, seq = hashlib.sha256(), 0, 1
    for _ in range(info.chunks or 0):
        try:
            msg = await js.get_msg(IMAGES_STREAM, seq=seq, subject=subject, next=True)
        except (NotFoundError, nats.errors.Error) as exc:
            raise ImageStoreError(f"object {sha256} ends after {size_bytes} bytes") from exc
        data = msg.data or b""
        digest.update(data)
        size_bytes += len(data)
        write(data)
        seq = (msg.seq or seq) + 1
    if size_bytes != (info.size or 0):
        raise ImageStoreError(f"object {sha256} has {size_bytes} of {info.size} bytes")
    if digest.hexdigest() != sha256:
        raise ImageStoreError(f"the bytes stored under {sha256} have sha256 {digest.hexdigest()}")
    return size_bytes


async def delete_image_object(js: JetStreamContext, sha256: str) -> None:
    try:
        bucket = await image_bucket(js, create=False)
        await bucket.delete(sha256)
    except (ObjectNotFoundError, NotFoundError, ImageStoreError):
        pass
