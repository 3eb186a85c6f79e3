"""Image bytes in the JetStream object store: one object per image, named by its sha256 (hex).

Uploaders (the CLI, an agent capturing a VM) put the object, then ask the scheduler to register
it; agents fetch by digest into their cache. The object store checks each object's digest on
read, and the name being the digest makes uploads idempotent and shares identical images.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from common import subjects
from common.errors import StratusError


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


IMAGES_STREAM = f"OBJ_{subjects.IMAGES_BUCKET}"
"""The stream behind the images object store (nats-py names it so)."""


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


async def read_image_head(js: JetStreamContext, sha256: str) -> tuple[bytes, int]:
    """The object's first bytes (for format checks) and its size."""
    try:
        bucket = await image_bucket(js, create=False)
        result = await bucket.get(sha256)
    except (ObjectNotFoundError, NotFoundError) as exc:
        raise ImageStoreError(f"no image object {sha256} in the gallery") from exc
    data = result.data or b""
    return bytes(data[: 64 * 1024]), len(data)


async def delete_image_object(js: JetStreamContext, sha256: str) -> None:
    try:
        bucket = await image_bucket(js, create=False)
        await bucket.delete(sha256)
    except (ObjectNotFoundError, NotFoundError, ImageStoreError):
        pass
