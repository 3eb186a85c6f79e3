"""The image gallery and capture, in the core. Pure.

- The built-in image ``tiny`` always exists (hosts carry it in their boot kit); configured
  built-in images are registered from what the shell stored at start-up (``BuiltinImage``).
- Uploads are registered after the shell checked their bytes; deleting an image in use is
  refused; a deleted image's bytes go once no live image uses them (``DropImageObject``).
- Capture: the VM is stopped, then its OS disk's host is told to flatten and store it
  (``CaptureDisk``, repeated until the host reports), and the image becomes available.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.fields import ErrorCode
from common.ids import HostId, VmName
from common.image_messages import (
    ImageCaptured,
    ImageInfo,
    ImageRef,
    ImageReply,
    ImageState,
    UploadImage,
)
from common.messages import CaptureDisk, CaptureVm, DiskKind, VmReply, VmState
from scheduler.core import lifecycle
from scheduler.core.context import StepContext
from scheduler.core.contract import BuiltinImage, DropImageObject
from scheduler.core.views import image_error, image_info, vm_error
from scheduler.state.storage import DiskRecord, ImageRecord

BUILTIN_IMAGE = "tiny"
DELETED = "deleted"
"""Reason of a deleted image's tombstone: the name may be used again (next version)."""


def live_image(images: dict[str, ImageRecord], name: str) -> ImageRecord | None:
    image = images.get(name)
    return None if image is None or image.reason == DELETED else image


def listed_images(images: dict[str, ImageRecord]) -> list[ImageInfo]:
    return [image_info(i) for _, i in sorted(images.items()) if i.reason != DELETED]


def object_unused(images: dict[str, ImageRecord], sha256: str) -> bool:
    """No live image keeps the object ``sha256`` (it may be removed from the store)."""
    return all(i.sha256 != sha256 or i.reason == DELETED for i in images.values())


def image_for_create(images: dict[str, ImageRecord], name: str) -> ImageRecord | VmReply:
    image = live_image(images, name)
    if image is None:
        known = ", ".join(i.name for i in listed_images(images))
        return vm_error(ErrorCode.INVALID_IMAGE, f"unknown image {name!r}; known: {known}")
    if image.state is not ImageState.AVAILABLE:
        return vm_error(ErrorCode.INVALID_STATE, f"image {name!r} is {image.state}")
    return image


# --------------------------------------------------------------------------- gallery


def register_builtins(ctx: StepContext, builtins: Iterable[BuiltinImage]) -> None:
    """The built-in images: ``tiny`` even when no copy of it was uploaded (hosts carry it),
    and each configured one whose bytes the shell stored (a new version if they changed)."""
    images = ctx.state.images
    for found in builtins:
        known = images.get(found.name)
        if known is not None and known.sha256 == found.sha256 and known.reason != DELETED:
            continue
        images[found.name] = ImageRecord(
            name=found.name,
            version=known.version + 1 if known is not None else 1,
            format=found.format,
            size_bytes=found.size_bytes,
            sha256=found.sha256,
            state=ImageState.AVAILABLE,
            builtin=True,
            created_at=ctx.now.wall,
        )
        ctx.state.image_changed(found.name)
    if BUILTIN_IMAGE not in images:
        images[BUILTIN_IMAGE] = ImageRecord(
            name=BUILTIN_IMAGE, builtin=True, created_at=ctx.now.wall
        )
        ctx.state.image_changed(BUILTIN_IMAGE)


def _put_image(ctx: StepContext, image: ImageRecord) -> None:
    old = ctx.state.images.get(image.name)
    if old is not None:
        image.version = old.version + 1
    ctx.state.images[image.name] = image
    ctx.state.image_changed(image.name)


def gallery_op(ctx: StepContext, token: int, body: UploadImage | ImageRef | ImageCaptured) -> None:
    """Answer a gallery operation at once: upload (registration of checked bytes), delete, or
    an agent's capture report."""
    match body:
        case UploadImage():
            reply = _register(ctx, body)
        case ImageRef():
            reply = _delete_image(ctx, body.name)
        case ImageCaptured():
            reply = _captured(ctx, body)
    ctx.reply(token, reply)
    deleted = reply.image if isinstance(body, ImageRef) else None
    if deleted is not None and deleted.sha256 and object_unused(ctx.state.images, deleted.sha256):
        ctx.actions.append(DropImageObject(deleted.sha256))


def _register(ctx: StepContext, body: UploadImage) -> ImageReply:
    if live_image(ctx.state.images, body.name) is not None:
        return image_error(ErrorCode.CONFLICT, f"image {body.name!r} exists")
    image = ImageRecord(
        name=body.name,
        os=body.os,
        format=body.format or "qcow2",
        size_bytes=body.size_bytes,
        sha256=body.sha256,
        created_at=ctx.now.wall,
    )
    _put_image(ctx, image)
    return ImageReply(image=image_info(image))


def _delete_image(ctx: StepContext, name: str) -> ImageReply:
    image = live_image(ctx.state.images, name)
    if image is None:
        return image_error(ErrorCode.NOT_FOUND, f"image {name!r} does not exist")
    if image.builtin:
        return image_error(ErrorCode.INVALID_STATE, f"image {name!r} is built in")
    if image.state is ImageState.CAPTURING:
        return image_error(ErrorCode.INVALID_STATE, f"image {name!r} is being captured")
    users = sorted(
        vm.name
        for vm in ctx.state.vms.values()
        if vm.image == name and vm.state is not VmState.DELETED
    )
    if users:
        shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
        return image_error(ErrorCode.CONFLICT, f"image {name!r} is used by vms: {shown}")
    image.reason = DELETED
    ctx.state.image_changed(name)
    return ImageReply(image=image_info(image))


# --------------------------------------------------------------------------- capture


def capture(ctx: StepContext, body: CaptureVm) -> VmName | VmReply:
    images = ctx.state.images
    record = ctx.state.vms.get(VmName(body.name))
    if record is None or record.state is VmState.DELETED:
        return vm_error(ErrorCode.NOT_FOUND, f"vm {body.name!r} does not exist")
    if record.state is not VmState.RUNNING or record.host is None:
        return vm_error(
            ErrorCode.INVALID_STATE,
            f"vm {body.name!r} is {record.state}: only a running vm can be captured",
        )
    if live_image(images, body.image) is not None:
        return vm_error(ErrorCode.CONFLICT, f"image {body.image!r} exists")
    os_disk = next((d for d in record.disks if d.kind is DiskKind.OS), None)
    if os_disk is None:
        return vm_error(ErrorCode.INVALID_STATE, f"vm {body.name!r} has no os disk record")
    source = live_image(images, record.image)
    _put_image(
        ctx,
        ImageRecord(
            name=body.image,
            os=source.os if source else "linux",
            state=ImageState.CAPTURING,
            source_vm=record.name,
            reason=f"capturing vm {record.name}",
            created_at=ctx.now.wall,
            capture_disk=os_disk.disk_id,
            capture_host=os_disk.host or _copy_holder(os_disk, record.host) or record.host,
        ),
    )
    lifecycle.stop(ctx, record)
    ctx.change_vm(record, reason=f"stopping to capture into image {body.image}")
    return record.name


def _copy_holder(disk: DiskRecord, own: HostId | None) -> HostId | None:
    """A replicated disk is captured from one of its current copies (the VM's host's, if it
    holds one): that host's replica server has the file."""
    current = disk.copy_hosts()
    return own if own in current else next(iter(current), None)


def progress_captures(ctx: StepContext) -> None:
    """Tell the host of each stopped VM being captured to capture its disk (again every
    ``command_retry_s`` until it reports); fail captures whose VM or host went away."""
    hosts = ctx.state.hosts
    for image in ctx.state.images.values():
        if image.state is not ImageState.CAPTURING:
            continue
        vm = ctx.state.vms.get(VmName(image.source_vm or ""))
        host = image.capture_host
        if vm is None or vm.state in (VmState.DELETING, VmState.DELETED):
            _fail_capture(ctx, image, "the vm was deleted before its disk was captured")
        elif vm.state is VmState.STOPPING:
            continue
        elif vm.state is not VmState.STOPPED:
            _fail_capture(ctx, image, f"the vm became {vm.state} before its disk was captured")
        elif host is None or host not in hosts or not hosts[host].up:
            _fail_capture(ctx, image, f"host {host} of the disk is down")
        else:
            command = CaptureDisk(
                name=vm.name,
                generation=vm.generation,
                disk_id=image.capture_disk,
                image=image.name,
            )
            ctx.send(host, [command])


def _fail_capture(ctx: StepContext, image: ImageRecord, why: str) -> None:
    image.state = ImageState.FAILED
    image.reason = f"capture failed: {why}"
    ctx.state.image_changed(image.name)


def _captured(ctx: StepContext, body: ImageCaptured) -> ImageReply:
    """An agent's capture report (its host checked against the subject by the shell): taken
    only from the host the capture was assigned to, about the VM being captured."""
    image = live_image(ctx.state.images, body.image)
    if image is None:
        return image_error(ErrorCode.NOT_FOUND, f"image {body.image!r} does not exist")
    if body.vm != image.source_vm:
        return image_error(
            ErrorCode.INVALID_REQUEST, f"image {body.image!r} is not captured from vm {body.vm!r}"
        )
    if image.state is ImageState.CAPTURING and body.host_id != image.capture_host:
        return image_error(
            ErrorCode.INVALID_REQUEST,
            f"the capture of image {body.image!r} was assigned to host {image.capture_host}, "
            f"not {body.host_id}",
        )
    if image.state is not ImageState.CAPTURING:
        if image.state is ImageState.AVAILABLE and image.sha256 == body.sha256:
            return ImageReply(image=image_info(image))  # a repeated report
        return image_error(ErrorCode.INVALID_STATE, f"image {body.image!r} is {image.state}")
    if body.error:
        _fail_capture(ctx, image, body.error)
    else:
        image.state = ImageState.AVAILABLE
        image.sha256, image.size_bytes, image.format = body.sha256, body.size_bytes, body.format
        image.reason = ""
        image.capture_disk, image.capture_host = "", None
        ctx.state.image_changed(image.name)
    return ImageReply(image=image_info(image))
