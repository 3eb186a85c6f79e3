"""The /v1 routes of disks, captures and the image gallery.

These go to the scheduler's own NATS API (``stratus.api.disk.*``, ``stratus.api.vm.capture``,
``stratus.api.image.*``) on its connection: the HTTP face gives the same answers as the NATS
face because it is a client of it, including the check of an upload's bytes.

Image upload is one request: ``PUT /v1/images/{name}`` with the image's bytes as the body
(``application/octet-stream``, which a browser sends cross-site only after a CORS preflight this
server never grants). The bytes are streamed to a temporary file (never held whole, at most
``MAX_IMAGE_BYTES``) while their sha256 is computed; a ``sha256`` query parameter, when given,
must match it (else 422 ``invalid_image``). They are then put in the images object store and
registered, exactly as ``stratus image upload`` does over NATS.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path
from typing import IO, Final

import msgspec
import nats.errors
from aiohttp import web

from common import codec, messages as m, subjects
from common.image_messages import ImageListReply, ImageRef, ImageReply, ListImages, UploadImage
from common.imagestore import ImageStoreError, put_image
from scheduler.shell.http.errors import HttpError
from scheduler.shell.http.registry import NATS, Endpoint, Registry
from scheduler.shell.http.routes import (
    IDEMPOTENCY_HEADER,
    SUBMIT_TIMEOUT_S,
    body_of,
    json_response,
    parse_query,
    path_value,
    read_page,
    request_id,
    vm_ref,
)

OCTET_STREAM: Final = "application/octet-stream"
MAX_IMAGE_BYTES: Final = 64 * 1024**3
"""Largest image an HTTP upload may carry (64 GiB); more gets 413 ``too_large``."""
UPLOAD_TIMEOUT_S: Final = 120.0
"""Registering an upload waits for the scheduler to re-read and check the stored bytes."""
_CHUNK_BYTES: Final = 1024 * 1024


class NewDisk(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/vms/{name}/disks`` (``AttachDisk`` without the VM, named by the path)."""

    size_mib: m.DiskSizeMib


class CaptureAs(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/vms/{name}/capture`` (``CaptureVm`` without the VM)."""

    image: m.ImageNameField


class ImageUpload(msgspec.Struct, kw_only=True):
    """Query of ``PUT /v1/images/{name}``; the body is the image's bytes."""

    os: m.ShortText = "linux"
    sha256: m.Sha256Field | None = None
    """When given, the body's sha256 must be this (a check against a damaged transfer)."""


class _Peek(msgspec.Struct):
    error: m.ErrorBody | None = None


_peek: Final = msgspec.json.Decoder(_Peek)


async def forward(
    request: web.Request,
    subject: str,
    body: msgspec.Struct,
    *,
    status: int = 200,
    timeout_s: float = SUBMIT_TIMEOUT_S,
) -> web.Response:
    """Ask the NATS API; its reply is passed through, or raised as its error."""
    nc = request.app[NATS]
    try:
        reply = await nc.request(subject, codec.encode(body), timeout=timeout_s)
    except (nats.errors.Error, TimeoutError) as exc:
        raise HttpError(m.ErrorCode.UNAVAILABLE, "the scheduler did not answer in time") from exc
    error = _peek.decode(reply.data).error
    if error is not None:
        raise HttpError(error.code, error.detail)
    return json_response(reply.data, status)


# --------------------------------------------------------------------------- handlers


async def attach_disk(request: web.Request) -> web.StreamResponse:
    ref = vm_ref(request)
    disk = await body_of(request, NewDisk)
    body = m.AttachDisk(vm=ref.name, size_mib=disk.size_mib, request_id=ref.request_id)
    return await forward(request, subjects.DISK_ATTACH, body)


async def detach_disk(request: web.Request) -> web.StreamResponse:
    ref = vm_ref(request)
    disk_id = path_value(request, "disk_id", m.DetachDisk, "invalid disk id")
    body = m.DetachDisk(vm=ref.name, disk_id=disk_id, request_id=ref.request_id)
    return await forward(request, subjects.DISK_DETACH, body)


async def capture_vm(request: web.Request) -> web.StreamResponse:
    ref = vm_ref(request)
    target = await body_of(request, CaptureAs)
    body = m.CaptureVm(name=ref.name, image=target.image, request_id=ref.request_id)
    return await forward(request, subjects.VM_CAPTURE, body)


async def list_images(request: web.Request) -> web.StreamResponse:
    return read_page(request, subjects.IMAGE_LIST, ListImages)


async def delete_image(request: web.Request) -> web.StreamResponse:
    name = path_value(request, "name", ImageRef, "invalid image name")
    body = ImageRef(name=name, request_id=request_id(request))
    return await forward(request, subjects.IMAGE_DELETE, body)


async def upload_image(request: web.Request) -> web.StreamResponse:
    name = path_value(request, "name", ImageRef, "invalid image name")
    query = parse_query(request.query, ImageUpload)
    key = request_id(request)
    with tempfile.TemporaryDirectory(prefix="stratus-upload-") as spool:
        path = Path(spool) / "image"
        sha256, size_bytes = await _spool(request, path)
        if query.sha256 is not None and query.sha256 != sha256:
            detail = f"the body's sha256 is {sha256}, not {query.sha256}"
            raise HttpError(m.ErrorCode.INVALID_IMAGE, detail)
        try:
            await put_image(request.app[NATS].jetstream(), path)
        except (ImageStoreError, nats.errors.Error, TimeoutError) as exc:
            detail = f"the images object store did not take the bytes: {exc}"
            raise HttpError(m.ErrorCode.UNAVAILABLE, detail) from exc
    body = UploadImage(name=name, sha256=sha256, size_bytes=size_bytes, os=query.os, request_id=key)
    return await forward(
        request, subjects.IMAGE_UPLOAD, body, status=201, timeout_s=UPLOAD_TIMEOUT_S
    )


async def _spool(request: web.Request, path: Path) -> tuple[str, int]:
    """Write the body to ``path`` chunk by chunk; its sha256 and size (bounded, not empty)."""
    if request.content_type != OCTET_STREAM:
        detail = f"an image body must be {OCTET_STREAM}, not {request.content_type}"
        raise HttpError(m.ErrorCode.UNSUPPORTED_MEDIA_TYPE, detail)
    if (request.content_length or 0) > MAX_IMAGE_BYTES:
        raise HttpError(m.ErrorCode.TOO_LARGE, f"images are at most {MAX_IMAGE_BYTES} bytes")
    digest, size_bytes = hashlib.sha256(), 0
    file: IO[bytes] = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
            size_bytes += len(chunk)
            if size_bytes > MAX_IMAGE_BYTES:
                raise HttpError(
                    m.ErrorCode.TOO_LARGE, f"images are at most {MAX_IMAGE_BYTES} bytes"
                )
            digest.update(chunk)
            await asyncio.to_thread(file.write, chunk)
    finally:
        await asyncio.to_thread(file.close)
    if size_bytes == 0:
        raise HttpError(m.ErrorCode.INVALID_IMAGE, "the body is empty: send the image's bytes")
    return digest.hexdigest(), size_bytes


# --------------------------------------------------------------------------- the table

_VM_PATH = (("name", m.VmRef, "name"),)
_DISK_PATH = (*_VM_PATH, ("disk_id", m.DetachDisk, "disk_id"))
_IMAGE_PATH = (("name", ImageRef, "name"),)
_E = m.ErrorCode


def register(api: Registry) -> None:
    """The /v1 routes for disks, captures and images."""
    vm, disk, image = "vms", "disks", "images"
    for endpoint in (
        Endpoint("POST", "/v1/vms/{name}/disks", attach_disk, "attachDisk", "Give a stopped VM "
                 "a new empty data disk (used from its next start)", tag=disk, mutating=True,
                 path_params=_VM_PATH, body=NewDisk, response=m.VmReply,
                 headers=IDEMPOTENCY_HEADER, subject=subjects.DISK_ATTACH,
                 errors=(_E.NOT_FOUND, _E.INVALID_STATE)),
        Endpoint("DELETE", "/v1/vms/{name}/disks/{disk_id}", detach_disk, "detachDisk", "Take "
                 "a data disk off a stopped VM (its bytes are removed with it)", tag=disk,
                 mutating=True, path_params=_DISK_PATH, response=m.VmReply,
                 headers=IDEMPOTENCY_HEADER, subject=subjects.DISK_DETACH,
                 errors=(_E.NOT_FOUND, _E.INVALID_STATE)),
        Endpoint("POST", "/v1/vms/{name}/capture", capture_vm, "captureVm", "Stop a running VM "
                 "and turn its OS disk into the gallery image named in the body (the image is "
                 "`capturing`, then `available` or `failed`)", tag=vm, mutating=True,
                 path_params=_VM_PATH, body=CaptureAs, response=m.VmReply,
                 headers=IDEMPOTENCY_HEADER, subject=subjects.VM_CAPTURE,
                 errors=(_E.NOT_FOUND, _E.INVALID_STATE, _E.CONFLICT)),
        Endpoint("GET", "/v1/images", list_images, "listImages", "List gallery images (paged)",
                 tag=image, query=ListImages, response=ImageListReply,
                 subject=subjects.IMAGE_LIST),
        Endpoint("PUT", "/v1/images/{name}", upload_image, "uploadImage", "Upload a qcow2 or "
                 "raw disk image: the body is its bytes (streamed, at most 64 GiB); with "
                 "`sha256` they must have that digest", tag=image, mutating=True,
                 path_params=_IMAGE_PATH, query=ImageUpload, raw_body=OCTET_STREAM,
                 response=ImageReply, status=201, headers=IDEMPOTENCY_HEADER,
                 subject=subjects.IMAGE_UPLOAD,
                 errors=(_E.INVALID_IMAGE, _E.CONFLICT, _E.INVALID_STATE, _E.TOO_LARGE)),
        Endpoint("DELETE", "/v1/images/{name}", delete_image, "deleteImage", "Delete a gallery "
                 "image (refused while a VM uses it)", tag=image, mutating=True,
                 path_params=_IMAGE_PATH, response=ImageReply, headers=IDEMPOTENCY_HEADER,
                 subject=subjects.IMAGE_DELETE,
                 errors=(_E.NOT_FOUND, _E.INVALID_STATE, _E.CONFLICT)),
    ):  # fmt: skip
        api.add(endpoint)
