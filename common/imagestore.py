"""Image bytes in the JetStream object store: one object per image, named by its sha256 (hex).

Uploaders (the CLI, an agent capturing a VM) *stage* the bytes: they write the object's chunks
(``$O.STRATUS_IMAGES.C.<nuid>``) but not its metadata (``$O.STRATUS_IMAGES.M.<name>``, what
makes chunks an object), then ask the scheduler to register the image naming the nuid. The
scheduler checks the chunks' size and digest and writes the metadata itself
(``commit_staged``): no publisher or host may write or overwrite an object's metadata, so none
can point another image's name at other bytes, or mark it deleted. Agents fetch by digest into
their cache; the name being the digest makes uploads idempotent and shares identical images.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMetaOptions, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DEFAULT_CHUNK_SIZE,
    OBJ_DIGEST_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)
from nats.nuid import NUID

from common import subjects
from common.errors import StratusError
from common.images import HEADER_BYTES, file_sha256

HEAD_BYTES: Final = HEADER_BYTES
IMAGES_STREAM: Final = OBJ_STREAM_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET)
ROLLUP: Final = "Nats-Rollup"
ROLLUP_SUBJECT: Final = "sub"
"""A metadata message replaces the earlier ones on its subject (as nats-py's ``put`` writes it)."""


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


@dataclass(frozen=True)
class StagedImage:
    """Bytes an uploader put in the images store, for the scheduler to check and register."""

    sha256: str
    size_bytes: int
    nuid: str
    """The last token of the chunks' subject; "" when an object ``sha256`` was stored already."""


async def stage_image(js: JetStreamContext, path: Path) -> StagedImage:
    """Write the bytes of ``path`` as chunks of a new object (no metadata), unless the store
    holds an object with their digest already. ``UploadImage``/``ImageCaptured`` name the nuid;
    the scheduler commits the object (``commit_staged``)."""
    sha256 = await asyncio.to_thread(file_sha256, path)
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    if await _stored(js, sha256, size):
        return StagedImage(sha256, size, "")
    nuid = NUID().next().decode()
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET, obj=nuid)
    file = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, OBJ_DEFAULT_CHUNK_SIZE):
            await js.publish(subject, chunk)
    finally:
        file.close()
    return StagedImage(sha256, size, nuid)


async def _stored(js: JetStreamContext, sha256: str, size: int) -> bool:
    try:
        info = await (await image_bucket(js, create=False)).get_info(sha256)
    except (ObjectNotFoundError, NotFoundError):
        return False
    return info.size == size and not info.deleted


async def commit_staged(js: JetStreamContext, staged: StagedImage) -> None:
    """The scheduler's half of an upload: check that the chunks staged under ``staged.nuid``
    hold ``size_bytes`` bytes with digest ``sha256``, then write the object's metadata (named by
    the digest). An object already stored under that digest is kept as it is. Chunks that fail
    the check are left alone (the nuid is the uploader's word: it may name another object's
    chunks). Raises ``ImageStoreError``."""
    if not staged.nuid or await _stored(js, staged.sha256, staged.size_bytes):
        return
    digest, size_bytes, chunks = hashlib.sha256(), 0, 0
    async for data in _chunks(js, staged.nuid):
        digest.update(data)
        size_bytes, chunks = size_bytes + len(data), chunks + 1
        if size_bytes >= staged.size_bytes:
            break
    if size_bytes != staged.size_bytes or digest.hexdigest() != staged.sha256:
        raise ImageStoreError(
            f"the bytes staged under {staged.nuid} are not {staged.size_bytes} bytes with "
            f"sha256 {staged.sha256}"
        )
    info = ObjectInfo(
        name=staged.sha256,
        bucket=subjects.IMAGES_BUCKET,
        nuid=staged.nuid,
        size=size_bytes,
        chunks=chunks,
        mtime=datetime.now(UTC).isoformat(),
        digest=OBJ_DIGEST_TEMPLATE.format(
            digest=base64.urlsafe_b64encode(digest.digest()).decode()
        ),
        options=ObjectMetaOptions(max_chunk_size=OBJ_DEFAULT_CHUNK_SIZE),
    )
    name = base64.urlsafe_b64encode(staged.sha256.encode()).decode()
    subject = OBJ_META_PRE_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET, obj=name)
    body = json.dumps(info.as_dict()).encode()
    await js.publish(subject, body, headers={ROLLUP: ROLLUP_SUBJECT})


async def _chunks(js: JetStreamContext, nuid: str) -> AsyncIterator[bytes]:
    """The chunks under ``nuid``, in order, read by message get (see ``_read_object``)."""
    subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=subjects.IMAGES_BUCKET, obj=nuid)
    seq = 1
    while True:
        try:
            msg = await js.get_msg(IMAGES_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return
        yield msg.data or b""
        seq = (msg.seq or seq) + 1


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
