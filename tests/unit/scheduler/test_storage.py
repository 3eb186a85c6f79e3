"""Disks, the image gallery and capture in the pure core."""

from __future__ import annotations

import msgspec
import pytest

from common.fields import ErrorCode
from common.ids import VmName
from common.image_messages import ImageCaptured, ImageRef, ImageReply, ImageState, UploadImage
from common.messages import (
    AttachDisk,
    CaptureDisk,
    CaptureVm,
    DeleteVm,
    DetachDisk,
    DiskKind,
    StartVm,
    VmRef,
    VmReply,
    VmState,
)
from scheduler.core.contract import DropImageObject, Mutation, Op, Reply
from scheduler.placement.filters import Reason
from scheduler.state.model import VmRecord
from tests.unit.scheduler.corekit import CoreKit, commands, vm_events

SHA = "ab" * 32


def kit_with(*hosts: str) -> CoreKit:
    kit = CoreKit()
    for i, host in enumerate(hosts):
        kit.heartbeat(host, fault_domain=f"fd-{i}")
    return kit


def call(kit: CoreKit, op: Op, body: object) -> VmReply | ImageReply:
    token = next(kit.tokens)
    kit.step(Mutation(op, body, token))  # type: ignore[arg-type]
    [reply] = [a.body for a in kit.actions if isinstance(a, Reply) and a.token == token]
    assert isinstance(reply, VmReply | ImageReply)
    return reply


def vm(kit: CoreKit, name: str) -> VmRecord:
    return kit.state.vms[VmName(name)]


def run(kit: CoreKit, host: str) -> None:
    kit.heartbeat(host, kit.running_on(host))


def stop(kit: CoreKit, name: str, host: str) -> None:
    call(kit, Op.STOP, _ref(name))
    kit.heartbeat(host, [])  # the host reports it gone: stopped
    assert vm(kit, name).state is VmState.STOPPED


def _ref(name: str) -> VmRef:
    return VmRef(name=name)


def test_a_new_vm_gets_an_os_disk_of_its_image_and_its_data_disks() -> None:
    kit = kit_with("h1")
    reply = kit.create("web", data_disks_mib=[1024, 512])
    assert reply.vm is not None
    assert [(d.kind, d.size_mib, d.host) for d in reply.vm.disks] == [
        (DiskKind.OS, 0, None),
        (DiskKind.DATA, 1024, None),
        (DiskKind.DATA, 512, None),
    ]
    [start] = commands(kit.actions, "h1")
    assert isinstance(start, StartVm)
    assert [d.disk_id for d in start.vm.disks] == [d.disk_id for d in reply.vm.disks]
    assert start.vm.disks[0].image == "tiny"
    run(kit, "h1")
    assert {d.host for d in vm(kit, "web").disks} == {"h1"}, "made on h1 once it ran"


def test_unknown_image_is_refused() -> None:
    kit = kit_with("h1")
    reply = kit.create("web", image="nope")
    # invalid_image (422) as the README says: the request names what does not exist
    assert reply.error is not None and reply.error.code is ErrorCode.INVALID_IMAGE
    assert "tiny" in reply.error.detail


def test_a_stopped_vm_starts_again_on_the_host_holding_its_disks() -> None:
    kit = kit_with("h1", "h2")
    kit.create("web")
    first = vm(kit, "web").host
    assert first is not None
    run(kit, first)
    stop(kit, "web", first)
    other = "h2" if first == "h1" else "h1"
    kit.heartbeat(other, [])
    call(kit, Op.START, _ref("web"))
    assert vm(kit, "web").host == first
    assert vm(kit, "web").disks[0].disk_id.endswith("-os1"), "the same disk"


def test_a_pinned_vm_waits_when_its_disk_host_is_full() -> None:
    kit = kit_with("h1")
    kit.create("web", size="Large")
    run(kit, "h1")
    stop(kit, "web", "h1")
    kit.create("hog-1", size="Large")
    kit.create("hog-2", size="Large")  # h1 has no room left for web
    kit.heartbeat("h2", [])
    call(kit, Op.START, _ref("web"))
    web = vm(kit, "web")
    assert web.state is VmState.PENDING
    assert f"{Reason.DISKS_ELSEWHERE.value}: 1 host" in web.reason, web.reason
    assert f"{Reason.INSUFFICIENT_CPU.value}: 1 host" in web.reason, web.reason


def test_host_death_rebuilds_the_disks_from_the_image_and_says_so() -> None:
    kit = kit_with("h1", "h2")
    kit.create("web", data_disks_mib=[256])
    host = vm(kit, "web").host
    assert host is not None
    run(kit, host)
    old = [d.disk_id for d in vm(kit, "web").disks]
    survivor = "h2" if host == "h1" else "h1"
    kit.advance(3.0)
    kit.heartbeat(survivor, kit.running_on(survivor))
    kit.advance(4.0)  # the dead host's silence passes dead_after_s
    web = vm(kit, "web")
    assert web.host == survivor
    assert all(d.host is None for d in web.disks)
    assert not set(old) & {d.disk_id for d in web.disks}, "new disk ids"
    reasons = [e.reason for e in vm_events(kit.actions)]
    assert any("rebuilt from image tiny" in r and "1 data disk" in r for r in reasons), reasons


def test_data_disks_attach_and_detach_only_while_stopped() -> None:
    kit = kit_with("h1")
    kit.create("web")
    run(kit, "h1")
    busy = call(kit, Op.ATTACH_DISK, AttachDisk(vm="web", size_mib=128))
    assert busy.error is not None and busy.error.code is ErrorCode.INVALID_STATE
    stop(kit, "web", "h1")
    attached = call(kit, Op.ATTACH_DISK, AttachDisk(vm="web", size_mib=128))
    assert isinstance(attached, VmReply) and attached.vm is not None
    data = attached.vm.disks[1]
    assert (data.kind, data.size_mib, data.host) == (DiskKind.DATA, 128, "h1")
    os_id = attached.vm.disks[0].disk_id
    refused = call(kit, Op.DETACH_DISK, DetachDisk(vm="web", disk_id=os_id))
    assert refused.error is not None and refused.error.code is ErrorCode.INVALID_REQUEST
    detached = call(kit, Op.DETACH_DISK, DetachDisk(vm="web", disk_id=data.disk_id))
    assert isinstance(detached, VmReply) and detached.vm is not None
    assert [d.disk_id for d in detached.vm.disks] == [os_id]
    again = call(kit, Op.ATTACH_DISK, AttachDisk(vm="web", size_mib=128))
    assert isinstance(again, VmReply) and again.vm is not None
    assert again.vm.disks[1].disk_id != data.disk_id, "disk ids are never reused"


def test_deleting_a_stopped_vm_tells_its_disk_host() -> None:
    kit = kit_with("h1")
    kit.create("web")
    run(kit, "h1")
    stop(kit, "web", "h1")
    call(kit, Op.DELETE, _ref("web"))
    [cmd] = commands(kit.actions, "h1")
    assert isinstance(cmd, DeleteVm) and cmd.name == "web"


def test_capture_stops_the_vm_then_has_its_disk_host_capture_it() -> None:
    kit = kit_with("h1")
    kit.create("web")
    run(kit, "h1")
    reply = call(kit, Op.CAPTURE, CaptureVm(name="web", image="golden"))
    assert isinstance(reply, VmReply) and reply.vm is not None
    assert reply.vm.state is VmState.STOPPING
    assert kit.state.images["golden"].state is ImageState.CAPTURING
    kit.heartbeat("h1", [])
    kit.advance(0.2)
    [capture] = commands(kit.actions, "h1")
    assert isinstance(capture, CaptureDisk)
    assert capture.disk_id == vm(kit, "web").disks[0].disk_id

    report = ImageCaptured(image="golden", vm="web", host_id="h1", sha256=SHA, size_bytes=10)
    done = call(kit, Op.IMAGE_CAPTURED, report)
    assert isinstance(done, ImageReply) and done.image is not None
    assert (done.image.state, done.image.sha256, done.image.source_vm) == (
        ImageState.AVAILABLE,
        SHA,
        "web",
    )
    assert call(kit, Op.IMAGE_CAPTURED, report).error is None, "a repeated report is fine"
    assert call(kit, Op.IMAGE_CAPTURED, msgspec.structs.replace(report, vm="other")).error
    kit.create("copy", image="golden")
    [start] = commands(kit.actions, "h1")
    assert isinstance(start, StartVm) and start.vm.disks[0].image_sha256 == SHA


def test_a_capture_report_from_another_host_changes_nothing() -> None:
    kit = kit_with("h1", "h2")
    kit.create("web")
    host = vm(kit, "web").host
    assert host is not None
    run(kit, host)
    call(kit, Op.CAPTURE, CaptureVm(name="web", image="golden"))
    kit.heartbeat(host, [])
    other = "h2" if host == "h1" else "h1"
    forged = [
        ImageCaptured(image="golden", vm="web", host_id=other, sha256=SHA, size_bytes=10),
        ImageCaptured(image="golden", vm="web", host_id=other, error="boom"),
        ImageCaptured(image="golden", vm="db", host_id=host, sha256=SHA, size_bytes=10),
    ]
    for report in forged:
        reply = call(kit, Op.IMAGE_CAPTURED, report)
        assert reply.error is not None and reply.error.code is ErrorCode.INVALID_REQUEST
        image = kit.state.images["golden"]
        assert (image.state, image.sha256, image.capture_host) == (ImageState.CAPTURING, "", host)
    honest = ImageCaptured(image="golden", vm="web", host_id=host, sha256=SHA, size_bytes=10)
    assert call(kit, Op.IMAGE_CAPTURED, honest).error is None
    assert kit.state.images["golden"].state is ImageState.AVAILABLE


@pytest.mark.parametrize(
    ("setup", "code"),
    [("stopped", ErrorCode.INVALID_STATE), ("image-taken", ErrorCode.CONFLICT)],
    ids=["vm-not-running", "image-name-taken"],
)
def test_capture_refusals(setup: str, code: ErrorCode) -> None:
    kit = kit_with("h1")
    kit.create("web")
    run(kit, "h1")
    if setup == "stopped":
        stop(kit, "web", "h1")
    image = "tiny" if setup == "image-taken" else "fresh"
    reply = call(kit, Op.CAPTURE, CaptureVm(name="web", image=image))
    assert reply.error is not None and reply.error.code is code


def test_a_capture_whose_vm_starts_again_fails() -> None:
    kit = kit_with("h1")
    kit.create("web")
    run(kit, "h1")
    call(kit, Op.CAPTURE, CaptureVm(name="web", image="golden"))
    kit.heartbeat("h1", [])
    call(kit, Op.START, _ref("web"))
    kit.advance(0.2)
    image = kit.state.images["golden"]
    assert image.state is ImageState.FAILED and "before its disk was captured" in image.reason


def test_gallery_upload_conflict_and_delete_rules() -> None:
    kit = kit_with("h1")
    upload = UploadImage(name="app", sha256=SHA, size_bytes=512, format="raw")
    created = call(kit, Op.IMAGE_UPLOAD, upload)
    assert isinstance(created, ImageReply) and created.image is not None
    assert (created.image.version, created.image.format) == (1, "raw")
    taken = call(kit, Op.IMAGE_UPLOAD, upload)
    assert taken.error is not None and taken.error.code is ErrorCode.CONFLICT

    builtin = call(kit, Op.IMAGE_DELETE, ImageRef(name="tiny"))
    assert builtin.error is not None and builtin.error.code is ErrorCode.INVALID_STATE
    kit.create("web", image="app")
    in_use = call(kit, Op.IMAGE_DELETE, ImageRef(name="app"))
    assert in_use.error is not None and in_use.error.code is ErrorCode.CONFLICT
    call(kit, Op.DELETE, _ref("web"))
    kit.heartbeat("h1", [])
    deleted = call(kit, Op.IMAGE_DELETE, ImageRef(name="app"))
    assert deleted.error is None
    assert DropImageObject(SHA) in kit.actions, "its bytes are no longer used"
    again = call(kit, Op.IMAGE_UPLOAD, upload)
    assert isinstance(again, ImageReply) and again.image is not None
    assert again.image.version == 2, "a name used again gets the next version"


def test_disks_of_vms_placed_but_not_yet_running_count_against_their_host() -> None:
    """A host-local disk is made when its VM starts; until then it still takes room on the
    host it was placed on, or creates in a row would all fit a nearly full disk."""
    kit = CoreKit()
    kit.heartbeat("h1", fault_domain="fd-0", disk_capacity_mib=1500)
    kit.heartbeat("h2", fault_domain="fd-1", disk_capacity_mib=100_000)
    for i in range(3):
        kit.create(f"web-{i}")
    on_h1 = [vm(kit, f"web-{i}") for i in range(3) if vm(kit, f"web-{i}").host == "h1"]
    charged = sum(d.charged_mib for record in on_h1 for d in record.disks)
    assert on_h1 and charged <= 1500, [(r.name, r.state) for r in on_h1]
    assert all(vm(kit, f"web-{i}").host is not None for i in range(3)), "all placed"
