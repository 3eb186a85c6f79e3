"""The read API as its users see it: lists always name their list, placed VMs carry their
host's region (and ``region=`` finds them), bad names are explained in words."""

from __future__ import annotations

import msgspec
import pytest

from common import subjects
from common.fields import ErrorCode
from common.ids import VM_NAME_RULE
from common.messages import Size
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


def every_page(reads: ReadApi, subject: str, query: dict[str, object]) -> list[list[str]]:
    """The names on each page of a list, asked for page after page, each reply checked to fit."""
    key, name = {subjects.VM_LIST: ("vms", "name"), subjects.HOST_LIST: ("hosts", "host_id")}[
        subject
    ]
    pages: list[list[str]] = []
    marker: object = None
    while True:
        body = msgspec.json.encode({**query, "marker": marker} if marker else query)
        raw = reads.answer(subject, body, CoreKit().now())
        assert len(raw) <= SMALL_PAYLOAD
        reply = msgspec.json.decode(raw)
        assert "error" not in reply
        pages.append([item[name] for item in reply[key]])
        marker = reply.get("next")
        if marker is None:
            return pages


SMALL_PAYLOAD = 4096
"""A server whose ``max_payload`` is 4 KiB: a dozen VMs no longer fit in one reply."""


def test_a_list_larger_than_a_message_comes_in_pages_that_each_fit() -> None:
    kit = CoreKit()
    kit.heartbeat("h1", region="east")
    kit.heartbeat("h2", region="west")
    names = [f"web-{i:02}" for i in range(40)]
    for name in names:
        kit.create(name)
    reads = ReadApi(lambda: kit.state, [], max_reply_bytes=lambda: SMALL_PAYLOAD)
    pages = every_page(reads, subjects.VM_LIST, {})
    assert len(pages) > 1
    assert [name for page in pages for name in page] == names
    # Filters apply before paging: every page of a region's list holds only its VMs.
    east = every_page(reads, subjects.VM_LIST, {"region": "east"})
    in_east = sorted(n for n in names if kit.vm(n).host == "h1")
    assert in_east and [name for page in east for name in page] == in_east
    limited = every_page(reads, subjects.VM_LIST, {"limit": 3})
    assert all(len(page) <= 3 for page in limited)
    assert [name for page in limited for name in page] == names


def test_hosts_come_in_pages_too() -> None:
    kit = CoreKit()
    hosts = [f"h{i:02}" for i in range(12)]
    for host in hosts:
        kit.heartbeat(host)
    reads = ReadApi(lambda: kit.state, [], max_reply_bytes=lambda: SMALL_PAYLOAD)
    pages = every_page(reads, subjects.HOST_LIST, {"limit": 5})
    assert [len(page) for page in pages] == [5, 5, 2]
    assert [host for page in pages for host in page] == hosts


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        (subjects.VM_LIST, b'{"limit": 0}'),
        (subjects.VM_LIST, b'{"limit": -1}'),
        (subjects.VM_LIST, b'{"limit": 1001}'),
        (subjects.VM_LIST, b'{"limit": "10"}'),
        (subjects.VM_LIST, b'{"marker": 5}'),
        (subjects.HOST_LIST, b'{"limit": 0}'),
        (subjects.IMAGE_LIST, b'{"marker": ""}'),
        (subjects.VNET_LIST, b'{"limit": 1.5}'),
        (subjects.SIZES_LIST, b'{"marker": "Gigantic"}'),
    ],
    ids=[
        "zero",
        "negative",
        "above-max",
        "limit-text",
        "marker-number",
        "hosts-zero",
        "empty-marker",
        "fraction",
        "unknown-size",
    ],
)
def test_bad_paging_gets_a_typed_error(subject: str, body: bytes) -> None:
    kit = CoreKit()
    kit.create("web-1")
    reply = answer(ReadApi(lambda: kit.state, list(kit.core.sizes.values())), subject, body)
    error = reply["error"]
    assert isinstance(error, dict) and error["code"] == ErrorCode.INVALID_REQUEST.value


def test_sizes_keep_the_catalogue_order_across_pages() -> None:
    sizes = [Size(name=n, cpu_milli=1000, mem_mib=1024) for n in ("Small", "Medium", "Large")]
    reads = ReadApi(ClusterState, sizes)
    first = answer(reads, subjects.SIZES_LIST, b'{"limit": 2}')
    assert first == {"sizes": [msgspec.to_builtins(s) for s in sizes[:2]], "next": "Medium"}
    last = answer(reads, subjects.SIZES_LIST, b'{"limit": 2, "marker": "Medium"}')
    assert last == {"sizes": [msgspec.to_builtins(sizes[2])]}


def test_a_vm_larger_than_a_message_is_a_typed_error_not_silence() -> None:
    kit = CoreKit()
    kit.create("web-1")
    reads = ReadApi(lambda: kit.state, [], max_reply_bytes=lambda: 200)
    error = answer(reads, subjects.VM_LIST)["error"]
    assert isinstance(error, dict) and error["code"] == ErrorCode.TOO_LARGE.value
    assert "web-1" in error["detail"]
