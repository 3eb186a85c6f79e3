"""Image bytes in the JetStream object store: one object per image, named by its sha256 (hex).

Uploaders (the CLI, an agent capturing a VM) put the object, then ask the scheduler to register
it; agents fetch by digest into their cache. The object store checks each object's digest on
read, and the name being the digest makes uploads idempotent and shares identical images.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Final

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from common import subjects
from common.errors import StratusError
from common.images import HEADER_BYTES

HEAD_BYTES: Final = HEADER_BYTES
IMAGES_STREAM: Final = OBJ_STREAM_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET)
CHUNK_BATCH: Final = 8
"""Chunks (128 KiB each by default) fetched at a time when an image is checked."""
FETCH_TIMEOUT_S: Final = 10.0


class ImageStoreError(StratusError):
    """The object store could not store or return an image."""


async def image_bucket(js: JetStreamContext, *, create: bool = True) -> ObjectStore:
    try:
        return await js.object_store(subjects.IMAGES_BUCKET)
    except (BucketNotFoundError, NotFoundError) as exc:
        if not create:
            raise ImageStoreError("the images bucket does not exist") from exc
    config = ObjectStoreConfig(bucket=subjects.IMAGES_BUCKET, storage=StorageType.FILE)
    return await js.create_object_store(subjects.IMAGES_BUCKET, config=config)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def put_image(js: JetStreamContext, path: Path) -> tuple[str, int]:
    """Store ``path`` (unless an object with its digest exists); return (sha256, size)."""
    sha256 = await asyncio.to_thread(sha256_of, path)
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
    """Write the object ``sha256`` to ``dest`` (its digest is checked while reading)."""
    try:
        bucket = await image_bucket(js, create=False)
        file = await asyncio.to_thread(dest.open, "wb")
        try:
            await bucket.get(sha256, writeinto=file)
        finally:
            file.close()
    except (ObjectNotFoundError, NotFoundError) as exc:
        raise ImageStoreError(f"no image object {sha256} in the gallery") from exc


class _HeadAndDigest:
    """Keeps only an object's first ``head_bytes``, its length and its sha256."""

    def __init__(self, head_bytes: int) -> None:
        self.head = bytearray()
        self.size_bytes = 0
        self._head_bytes = head_bytes
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        missing = self._head_bytes - len(self.head)
        if missing > 0:
            self.head += data[:missing]
        self._digest.update(data)
        self.size_bytes += len(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


async def read_image_head(js: JetStreamContext, sha256: str) -> tuple[bytes, int]:
    """The object's first bytes (for format checks) and its size. The object is streamed in
    batches of ``CHUNK_BATCH`` chunks from a pull consumer, so it is read whole but never held
    whole; raises ``ImageStoreError`` when its bytes' sha256 is not ``sha256``, the name it was
    stored under (an uploader cannot register other bytes than it named)."""
    try:
        bucket = await image_bucket(js, create=False)
        info = await bucket.get_info(sha256)
    except (ObjectNotFoundError, NotFoundError) as exc:
        raise ImageStoreError(f"no image object {sha256} in the gallery") from exc
    sink = _HeadAndDigest(HEAD_BYTES)
    await _read_chunks(js, info.nuid or "", info.chunks or 0, sink)
    if sink.size_bytes != (info.size or 0):
        raise ImageStoreError(f"object {sha256} has {sink.size_bytes} of {info.size} bytes")
    if sink.hexdigest() != sha256:
        raise ImageStoreError(f"the bytes stored under {sha256} have sha256 {sink.hexdigest()}")
    return bytes(sink.head), sink.size_bytes


async def _read_chunks(js: JetStreamContext, nuid: str, chunks: int, sink: _HeadAndDigest) -> None:
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET, obj=nuid)
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0)
    sub = await js.pull_subscribe(subject, stream=IMAGES_STREAM, config=config)
    try:
        remaining = chunks
        while remaining > 0:
            try:
                batch = await sub.fetch(min(CHUNK_BATCH, remaining), timeout=FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError as exc:
                raise ImageStoreError(f"object chunks stopped after {sink.size_bytes} B") from exc
            for msg in batch:
                sink.write(msg.data)
            remaining -= len(batch)
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await sub.unsubscribe()


async def delete_image_object(js: JetStreamContext, sha256: str) -> None:
    try:
        bucket = await image_bucket(js, create=False)
        await bucket.delete(sha256)
    except (ObjectNotFoundError, NotFoundError, ImageStoreError):
        pass
