"""The image gallery's I/O, in the scheduler's shell: the object store bucket, built-in images
at startup, checking uploaded bytes before the core registers them, dropping unused bytes.

The core (scheduler/core/images.py) owns the gallery records; this module only touches bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import nats.errors
from msgspec.structs import replace
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from common import codec
from common.config import SchedulerConfig
from common.errors import StratusError
from common.fields import ErrorBody, ErrorCode
from common.image_messages import ImageCaptured, ImageReply, UploadImage
from common.images import ImageFormat, read_header, sniff_format
from common.imagestore import (
    IMAGES_STREAM,
    ImageStoreError,
    StagedImage,
    commit_staged,
    delete_image_object,
    image_bucket,
    put_image,
    read_image_head,
)
from common.streams import ensure_replicas, ensure_streams
from scheduler.core.contract import BuiltinImage, Mutation
from scheduler.core.images import object_unused
from scheduler.state.storage import ImageRecord

log = logging.getLogger(__name__)

_background: set[asyncio.Task[None]] = set()


def _in_background(coro: object, name: str) -> None:
    assert asyncio.iscoroutine(coro)
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def prepare_cluster(js: JetStreamContext, config: SchedulerConfig) -> list[BuiltinImage]:
    """Create or update the streams (replicas from the config) and store the built-in images'
    bytes; the built-in images. Idempotent. Stream updates and object-store reads need the
    streams' (and the JetStream meta) leaders: a standby does this once, before it may lead,
    so that a takeover while a NATS node is frozen does not wait for their re-election."""
    await ensure_streams(js, config.replicas)
    return await prepare(js, config)


async def prepare(js: JetStreamContext, config: SchedulerConfig) -> list[BuiltinImage]:
    """Create the images bucket and store the configured built-in images' bytes (idempotent:
    objects are named by sha256). The core registers them (a changed file becomes the image's
    next version). Runs before the core loop starts."""
    await image_bucket(js, replicas=config.replicas)
    await ensure_replicas(js, IMAGES_STREAM, config.replicas)
    found: list[BuiltinImage] = []
    for name, path in sorted(config.builtin_images.items()):
        try:
            sha256, size = await put_image(js, Path(path))
            header = await asyncio.to_thread(read_header, Path(path))
        except (OSError, ImageStoreError, nats.errors.Error) as exc:
            raise StratusError(f"cannot store built-in image {name} from {path}: {exc}") from exc
        image_format = sniff_format(header, size)
        if not isinstance(image_format, ImageFormat):
            raise StratusError(f"built-in image {name} ({path}): {image_format}")
        found.append(BuiltinImage(name, sha256, size, image_format.value))
        log.info("built-in image stored name=%s sha256=%s bytes=%d", name, sha256, size)
    return found


async def check_upload(js: JetStreamContext, body: UploadImage) -> UploadImage | str:
    """The upload with its checked format, or why its bytes are refused. Staged bytes are
    committed first: checked against the digest and size, their metadata written."""
    try:
        await commit_staged(js, StagedImage(body.sha256, body.size_bytes, body.nuid))
        header, size = await read_image_head(js, body.sha256)
    except (ImageStoreError, nats.errors.Error, TimeoutError) as exc:
        return f"the image bytes under {body.sha256} cannot be used: {exc}"
    if size != body.size_bytes:
        return f"stored object has {size} bytes, not {body.size_bytes}"
    image_format = sniff_format(header, size)
    if not isinstance(image_format, ImageFormat):
        return image_format
    return replace(body, format=image_format.value)


def check_upload_in_background(
    nc: Client,
    msg: Msg,
    item: Mutation,
    images: Callable[[], dict[str, ImageRecord]],
    enqueue: Callable[[Mutation], None],
) -> None:
    """Check an upload's bytes off the callback path, then hand it to the core (or refuse it
    with ``invalid_image`` and remove bytes that no image uses)."""
    assert isinstance(item.body, UploadImage)
    body = item.body

    async def run() -> None:
        js = nc.jetstream()
        checked = await check_upload(js, body)
        if isinstance(checked, UploadImage):
            enqueue(dataclasses.replace(item, body=checked))
            return
        log.warning("image upload refused name=%s reason=%s", body.name, checked)
        if object_unused(images(), body.sha256):
            await delete_image_object(js, body.sha256)
        detail = f"not a usable image: {checked}"
        reply = ImageReply(error=ErrorBody(code=ErrorCode.INVALID_IMAGE, detail=detail))
        try:
            await msg.respond(codec.encode(reply))
        except nats.errors.Error as exc:
            log.warning("image upload reply failed error=%r", exc)

    _in_background(run(), f"check-upload-{body.name}")


def commit_capture_in_background(
    nc: Client, item: Mutation, enqueue: Callable[[Mutation], None]
) -> None:
    """Commit the bytes a capture report names (staged by the agent, which may not write an
    object's metadata), then hand the report to the core; bytes that fail their check turn it
    into a failed capture."""
    assert isinstance(item.body, ImageCaptured)
    body = item.body
    if body.error or not body.nuid:
        enqueue(item)
        return

    async def run() -> None:
        staged = StagedImage(body.sha256, body.size_bytes, body.nuid)
        try:
            await commit_staged(nc.jetstream(), staged)
        except (ImageStoreError, nats.errors.Error, TimeoutError) as exc:
            log.warning("captured bytes refused image=%s error=%s", body.image, exc)
            failed = replace(body, error=f"the captured bytes cannot be used: {exc}")
            enqueue(dataclasses.replace(item, body=failed))
            return
        enqueue(item)

    _in_background(run(), f"commit-capture-{body.image}")


def drop_object_in_background(nc: Client, sha256: str) -> None:
    async def run() -> None:
        try:
            await delete_image_object(nc.jetstream(), sha256)
            log.info("image bytes removed sha256=%s", sha256)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("image bytes not removed sha256=%s error=%r", sha256, exc)

    _in_background(run(), f"drop-image-{sha256[:12]}")
