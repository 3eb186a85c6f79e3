"""Disks, images and capture inside the core: the operations and hooks ``core.py`` calls. Pure.

Functions here act through the core's own helpers (``_set``, ``_send``, ``_emit_vm``) so that
every change keeps the indexes, the store and the event stream right, exactly as the core's own
handlers do.

- Disks (scheduler/disks.py): made at create, pinned to the host they were made on once the VM
  runs there, rebuilt when that host is lost; data disks attach/detach while the VM is stopped.
- Gallery: the built-in image ``tiny`` always exists (hosts carry it in their boot kit); uploads
  are registered after the shell checked their bytes; deleting an image in use is refused.
- Capture: the VM is stopped, then its OS disk's host is told to flatten and store it
  (``CaptureDisk``, repeated until the host reports), and the image becomes available.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.ids import HostId, VmName
from common.messages import (
    AttachDisk,
    CaptureDisk,
    CaptureVm,
    DeleteVm,
    DetachDisk,
    DiskKind,
    ErrorBody,
    ErrorCode,
    ImageCaptured,
    ImageInfo,
    ImageRef,
    ImageReply,
    ImageState,
    UploadImage,
    VmReply,
    VmState,
)
from scheduler.core import disks
from scheduler.core.contract import Action, DropImageObject, Mutation, Now, Op, Reply
from scheduler.state.model import VmRecord
from scheduler.state.storage import ImageRecord

if TYPE_CHECKING:
    from scheduler.core.step import SchedulerCore

BUILTIN_IMAGE = "tiny"
DELETED = "deleted"
"""Reason of a deleted image's tombstone: the name may be used again (next version)."""


def _vm_error(code: ErrorCode, detail: str) -> VmReply:
    return VmReply(error=ErrorBody(code=code, detail=detail))


def _image_error(code: ErrorCode, detail: str) -> ImageReply:
    return ImageReply(error=ErrorBody(code=code, detail=detail))


# --------------------------------------------------------------------------- gallery


def ensure_builtin(core: SchedulerCore, now: Now) -> None:
    """The built-in image exists even when no copy of it was uploaded (hosts carry it)."""
    if BUILTIN_IMAGE not in core.state.images:
        core.state.images[BUILTIN_IMAGE] = ImageRecord(
            name=BUILTIN_IMAGE, builtin=True, created_at=now.wall
        )
        core.state.dirty_images.add(BUILTIN_IMAGE)


def live_image(core: SchedulerCore, name: str) -> ImageRecord | None:
    image = core.state.images.get(name)
    return None if image is None or image.reason == DELETED else image


def image_info(image: ImageRecord) -> ImageInfo:
    return ImageInfo(
        name=image.name,
        version=image.version,
        os=image.os,
        format=image.format,
        size_bytes=image.size_bytes,
        sha256=image.sha256,
        state=image.state,
        builtin=image.builtin,
        source_vm=image.source_vm,
        reason=image.reason,
        created_at=image.created_at,
    )


def listed_images(images: dict[str, ImageRecord]) -> list[ImageInfo]:
    return [image_info(i) for _, i in sorted(images.items()) if i.reason != DELETED]


def give_disks(record: VmRecord, image: ImageRecord, data_mib: list[int]) -> None:
    """A new VM's disks: its OS disk of ``image``, and the data disks asked for."""
    record.disks, record.disk_serial = disks.initial_disks(
        record.name, record.generation, image.name, image.sha256, data_mib
    )


def image_for_create(core: SchedulerCore, name: str) -> ImageRecord | VmReply:
    image = live_image(core, name)
    if image is None:
        known = ", ".join(i.name for i in listed_images(core.state.images))
        return _vm_error(ErrorCode.NOT_FOUND, f"unknown image {name!r}; known: {known}")
    if image.state is not ImageState.AVAILABLE:
        return _vm_error(ErrorCode.INVALID_STATE, f"image {name!r} is {image.state}")
    return image


def _put_image(core: SchedulerCore, image: ImageRecord) -> None:
    old = core.state.images.get(image.name)
    if old is not None:
        image.version = old.version + 1
    core.state.images[image.name] = image
    core.state.dirty_images.add(image.name)


def image_actions(core: SchedulerCore, item: Mutation, now: Now) -> list[Action]:
    """Answer a gallery operation; a deleted image's bytes go once no image uses them."""
    reply = image_op(core, item.op, item.body, now)
    actions: list[Action] = [Reply(item.token, reply)]
    deleted = reply.image if item.op is Op.IMAGE_DELETE else None
    if deleted is not None and deleted.sha256 and object_unused(core.state.images, deleted.sha256):
        actions.append(DropImageObject(deleted.sha256))
    return actions


def image_op(core: SchedulerCore, op: Op, body: object, now: Now) -> ImageReply:
    """Upload (registration of checked bytes), delete, or an agent's capture report."""
    if op is Op.IMAGE_UPLOAD:
        assert isinstance(body, UploadImage)
        return _register(core, body, now)
    if op is Op.IMAGE_DELETE:
        assert isinstance(body, ImageRef)
        return _delete_image(core, body.name)
    assert isinstance(body, ImageCaptured)
    return _captured(core, body)


def _register(core: SchedulerCore, body: UploadImage, now: Now) -> ImageReply:
    if live_image(core, body.name) is not None:
        return _image_error(ErrorCode.CONFLICT, f"image {body.name!r} exists")
    image = ImageRecord(
        name=body.name,
        os=body.os,
        format=body.format or "qcow2",
        size_bytes=body.size_bytes,
        sha256=body.sha256,
        created_at=now.wall,
    )
    _put_image(core, image)
    return ImageReply(image=image_info(image))


def _delete_image(core: SchedulerCore, name: str) -> ImageReply:
    image = live_image(core, name)
    if image is None:
        return _image_error(ErrorCode.NOT_FOUND, f"image {name!r} does not exist")
    if image.builtin:
        return _image_error(ErrorCode.INVALID_STATE, f"image {name!r} is built in")
    if image.state is ImageState.CAPTURING:
        return _image_error(ErrorCode.INVALID_STATE, f"image {name!r} is being captured")
    users = sorted(
        vm.name
        for vm in core.state.vms.values()
        if vm.image == name and vm.state is not VmState.DELETED
    )
    if users:
        shown = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
        return _image_error(ErrorCode.CONFLICT, f"image {name!r} is used by vms: {shown}")
    image.reason = DELETED
    core.state.dirty_images.add(name)
    return ImageReply(image=image_info(image))


def object_unused(images: dict[str, ImageRecord], sha256: str) -> bool:
    """No live image keeps the object ``sha256`` (it may be removed from the store)."""
    return all(i.sha256 != sha256 or i.reason == DELETED for i in images.values())


# --------------------------------------------------------------------------- VM disk operations


def vm_op(core: SchedulerCore, op: Op, body: object, now: Now) -> VmName | VmReply:
    """Attach or detach a data disk, or capture a VM."""
    if op is Op.CAPTURE:
        assert isinstance(body, CaptureVm)
        return _capture(core, body, now)
    assert isinstance(body, AttachDisk | DetachDisk)
    record = core.state.vms.get(VmName(body.vm))
    if record is None or record.state is VmState.DELETED:
        return _vm_error(ErrorCode.NOT_FOUND, f"vm {body.vm!r} does not exist")
    if record.state not in disks.EDITABLE_STATES:
        return _vm_error(
            ErrorCode.INVALID_STATE,
            f"vm {body.vm!r} is {record.state}: stop it to attach or detach disks",
        )
    if isinstance(body, AttachDisk):
        if sum(d.kind is DiskKind.DATA for d in record.disks) >= 8:
            return _vm_error(ErrorCode.INVALID_REQUEST, "a vm has at most 8 data disks")
        new_disks, serial = disks.attached(record, body.size_mib)
        core._set(record, now, disks=new_disks, disk_serial=serial)
    else:
        result = disks.detached(record, body.disk_id)
        if isinstance(result, str):
            return _vm_error(ErrorCode.INVALID_REQUEST, result)
        core._set(record, now, disks=result)
    return record.name


def pinned_host(core: SchedulerCore, record: VmRecord, now: Now) -> HostId | None:
    """Where a VM being placed must go (its disks' host), rebuilding disks that were lost."""
    lost = disks.lost_on(record, core.state.hosts)
    if lost is not None:
        new_disks, serial = disks.rebuilt(record)
        core._set(
            record,
            now,
            disks=new_disks,
            disk_serial=serial,
            reason=disks.rebuild_reason(record, lost),
        )
        core._emit_vm(record, now)
    return disks.disk_host(record)


def settle_disks(core: SchedulerCore, record: VmRecord, host: HostId, now: Now) -> None:
    """The VM runs on ``host``: its new disks exist there now."""
    settled = disks.settled(record, host)
    if settled is not None:
        core._set(record, now, disks=settled)


def drop_disks(core: SchedulerCore, record: VmRecord, now: Now) -> None:
    """A VM deleted while not running: its host removes the disks it keeps for it."""
    host = disks.disk_host(record)
    if host is not None and host in core.state.hosts and core.state.hosts[host].up:
        core._send(host, [DeleteVm(name=record.name, generation=record.generation)], now)


# --------------------------------------------------------------------------- capture


def _capture(core: SchedulerCore, body: CaptureVm, now: Now) -> VmName | VmReply:
    record = core.state.vms.get(VmName(body.name))
    if record is None or record.state is VmState.DELETED:
        return _vm_error(ErrorCode.NOT_FOUND, f"vm {body.name!r} does not exist")
    if record.state is not VmState.RUNNING or record.host is None:
        return _vm_error(
            ErrorCode.INVALID_STATE,
            f"vm {body.name!r} is {record.state}: only a running vm can be captured",
        )
    if live_image(core, body.image) is not None:
        return _vm_error(ErrorCode.CONFLICT, f"image {body.image!r} exists")
    os_disk = next((d for d in record.disks if d.kind is DiskKind.OS), None)
    if os_disk is None:
        return _vm_error(ErrorCode.INVALID_STATE, f"vm {body.name!r} has no os disk record")
    source = live_image(core, record.image)
    _put_image(
        core,
        ImageRecord(
            name=body.image,
            os=source.os if source else "linux",
            state=ImageState.CAPTURING,
            source_vm=record.name,
            reason=f"capturing vm {record.name}",
            created_at=now.wall,
            capture_disk=os_disk.disk_id,
            capture_host=os_disk.host or record.host,
        ),
    )
    core._stop(record, now)
    core._set(record, now, reason=f"stopping to capture into image {body.image}")
    return record.name


def progress_captures(core: SchedulerCore, now: Now) -> None:
    """Tell the host of each stopped VM being captured to capture its disk (again every
    ``command_retry_s`` until it reports); fail captures whose VM or host went away."""
    for image in core.state.images.values():
        if image.state is not ImageState.CAPTURING:
            continue
        vm = core.state.vms.get(VmName(image.source_vm or ""))
        host = image.capture_host
        if vm is None or vm.state in (VmState.DELETING, VmState.DELETED):
            _fail_capture(core, image, "the vm was deleted before its disk was captured")
        elif vm.state is VmState.STOPPING:
            continue
        elif vm.state is not VmState.STOPPED:
            _fail_capture(core, image, f"the vm became {vm.state} before its disk was captured")
        elif host is None or host not in core.state.hosts or not core.state.hosts[host].up:
            _fail_capture(core, image, f"host {host} of the disk is down")
        else:
            command = CaptureDisk(
                name=vm.name,
                generation=vm.generation,
                disk_id=image.capture_disk,
                image=image.name,
            )
            core._send(host, [command], now)


def _fail_capture(core: SchedulerCore, image: ImageRecord, why: str) -> None:
    image.state = ImageState.FAILED
    image.reason = f"capture failed: {why}"
    core.state.dirty_images.add(image.name)


def _captured(core: SchedulerCore, body: ImageCaptured) -> ImageReply:
    """An agent's capture report (its host checked against the subject by the shell): taken
    only from the host the capture was assigned to, about the VM being captured."""
    image = live_image(core, body.image)
    if image is None:
        return _image_error(ErrorCode.NOT_FOUND, f"image {body.image!r} does not exist")
    if body.vm != image.source_vm:
        return _image_error(
            ErrorCode.INVALID_REQUEST, f"image {body.image!r} is not captured from vm {body.vm!r}"
        )
    if image.state is ImageState.CAPTURING and body.host_id != image.capture_host:
        return _image_error(
            ErrorCode.INVALID_REQUEST,
            f"the capture of image {body.image!r} was assigned to host {image.capture_host}, "
            f"not {body.host_id}",
        )
    if image.state is not ImageState.CAPTURING:
        if image.state is ImageState.AVAILABLE and image.sha256 == body.sha256:
            return ImageReply(image=image_info(image))  # a repeated report
        return _image_error(ErrorCode.INVALID_STATE, f"image {body.image!r} is {image.state}")
    if body.error:
        _fail_capture(core, image, body.error)
    else:
        image.state = ImageState.AVAILABLE
        image.sha256, image.size_bytes, image.format = body.sha256, body.size_bytes, body.format
        image.reason = ""
        image.capture_disk, image.capture_host = "", None
        core.state.dirty_images.add(image.name)
    return ImageReply(image=image_info(image))
