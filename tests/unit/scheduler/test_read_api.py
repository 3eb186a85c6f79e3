"""The read API as its users see it: lists always name their list, placed VMs carry their
host's region (and ``region=`` finds them), bad names are explained in words."""

from __future__ import annotations

import msgspec
import pytest

from common import subjects
from common.fields import ErrorCode
from common.ids import VM_NAME_RULE
from scheduler.core.contract import InvalidJob
from scheduler.shell.api import ReadApi, decode_mutation
from scheduler.state.cluster import ClusterState
from tests.unit.scheduler.corekit import CoreKit


def answer(reads: ReadApi, subject: str, body: bytes = b"") -> dict[str, object]:
    reply = msgspec.json.decode(reads.answer(subject, body, CoreKit().now()))
    assert isinstance(reply, dict)
    return reply


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        (subjects.VM_LIST, "vms"),
        (subjects.HOST_LIST, "hosts"),
        (subjects.IMAGE_LIST, "images"),
        (subjects.SIZES_LIST, "sizes"),
    ],
    ids=["vms", "hosts", "images", "sizes"],
)
def test_an_empty_list_is_an_empty_list_not_an_empty_object(subject: str, key: str) -> None:
    reads = ReadApi(ClusterState, [])
    assert answer(reads, subject) == {key: []}


def test_a_placed_vm_shows_its_hosts_region_and_is_found_by_it() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", region="local")
    kit.create("web-1")  # no region asked for: any host will do
    reads = ReadApi(lambda: kit.state, [])
    listed = answer(reads, subjects.VM_LIST, b'{"region": "local"}')["vms"]
    assert isinstance(listed, list) and [vm["name"] for vm in listed] == ["web-1"]
    assert listed[0]["region"] == "local"
    shown = answer(reads, subjects.VM_GET, b'{"name": "web-1"}')["vm"]
    assert isinstance(shown, dict) and shown["region"] == "local"
    assert answer(reads, subjects.VM_LIST, b'{"region": "elsewhere"}') == {"vms": []}


def test_a_pending_vm_has_no_region_unless_it_asked_for_one() -> None:
    kit = CoreKit()
    kit.create("web-1")  # no host yet
    reads = ReadApi(lambda: kit.state, [])
    listed = answer(reads, subjects.VM_LIST)["vms"]
    assert isinstance(listed, list) and listed[0]["region"] is None


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        (subjects.VM_CREATE, b'{"name": "Web_1", "size": "Small"}'),
        (subjects.VM_STOP, b'{"name": "Web_1"}'),
        (subjects.VM_CAPTURE, b'{"name": "Web_1", "image": "snap"}'),
        (subjects.DISK_ATTACH, b'{"vm": "Web_1", "size_mib": 10}'),
    ],
    ids=["create", "stop", "capture", "attach"],
)
def test_a_bad_vm_name_is_explained_in_words(subject: str, body: bytes) -> None:
    refused = decode_mutation(subject, body, token=1)
    assert isinstance(refused, InvalidJob) and refused.code is ErrorCode.INVALID_REQUEST
    assert VM_NAME_RULE in refused.detail and "'Web_1'" in refused.detail
    assert "regex" not in refused.detail and "^" not in refused.detail


def test_a_bad_vm_name_in_a_read_is_explained_in_words() -> None:
    reply = answer(ReadApi(ClusterState, []), subjects.VM_GET, b'{"name": "Web_1"}')
    error = reply["error"]
    assert isinstance(error, dict) and VM_NAME_RULE in error["detail"]
    assert "regex" not in error["detail"]


def test_other_decode_errors_keep_their_wording() -> None:
    refused = decode_mutation(subjects.VM_CREATE, b'{"name": "ok"}', token=1)
    assert isinstance(refused, InvalidJob) and "size" in refused.detail
