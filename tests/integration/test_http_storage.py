"""Disks, captures and the image gallery over HTTP, against a real scheduler and agent: the same
operations as ``stratus.api.disk.*``, ``stratus.api.vm.capture`` and ``stratus.api.image.*``."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from rigs.cluster import Cluster
from tests.integration.test_http import AUTH, Api, api
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
__all__ = ["api"]

OCTET = {"Content-Type": "application/octet-stream"}


def raw_disk(size_bytes: int = 1024 * 1024) -> bytes:
    """A raw disk image: zeros with an MBR boot signature."""
    data = bytearray(size_bytes)
    data[510:512] = b"\x55\xaa"
    return bytes(data)


async def put_image(api: Api, name: str, data: bytes, query: str = "") -> tuple[int, Any]:
    headers = AUTH | OCTET
    async with api.http.put(f"/v1/images/{name}{query}", data=data, headers=headers) as response:
        return response.status, await response.json()


async def test_an_image_uploaded_over_http_is_listed_used_and_deleted(
    api: Api, cluster: Cluster
) -> None:
    data = raw_disk()
    sha256 = hashlib.sha256(data).hexdigest()
    status, body = await put_image(api, "base", data, f"?sha256={sha256}&os=linux")
    assert status == 201, body
    image = body["image"]
    assert (image["name"], image["format"], image["size_bytes"]) == ("base", "raw", len(data))
    assert (image["sha256"], image["state"]) == (sha256, "available")
    status, listed = await api.call("GET", "/v1/images", auth=False)
    assert status == 200 and "base" in [i["name"] for i in listed["images"]]

    cluster.start_agent("h1")
    await api.wait_hosts("h1")
    status, body = await api.call(
        "POST", "/v1/vms", {"name": "web-1", "size": "Small", "image": "base"}
    )
    assert status == 201, body
    await api.wait_state("web-1", "running")
    status, body = await api.call("DELETE", "/v1/images/base")
    assert status == 409 and body["error"]["code"] == "conflict", body  # web-1 uses it

    status, body = await api.call("DELETE", "/v1/vms/web-1")
    assert status == 200
    await api.wait_state("web-1", "deleted")
    status, body = await api.call("DELETE", "/v1/images/base")
    assert status == 200 and body["image"]["name"] == "base", body
    status, listed = await api.call("GET", "/v1/images", auth=False)
    assert "base" not in [i["name"] for i in listed["images"]]


@pytest.mark.parametrize(
    ("data", "query", "headers", "status", "code"),
    [
        (raw_disk(), "?sha256=" + "0" * 64, OCTET, 422, "invalid_image"),
        (b"not a disk" * 100, "", OCTET, 422, "invalid_image"),
        (b"", "", OCTET, 422, "invalid_image"),
        (raw_disk(), "", {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
        (raw_disk(), "?sha256=xyz", OCTET, 400, "invalid_request"),
    ],
    ids=["wrong-digest", "not-an-image", "empty", "json", "bad-digest-syntax"],
)
async def test_a_bad_upload_is_refused_and_registers_nothing(
    api: Api, data: bytes, query: str, headers: dict[str, str], status: int, code: str
) -> None:
    async with api.http.put(
        f"/v1/images/bad{query}", data=data, headers=AUTH | headers
    ) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == code
    _, listed = await api.call("GET", "/v1/images", auth=False)
    assert "bad" not in [i["name"] for i in listed.get("images", [])]


async def test_an_upload_needs_the_token(api: Api) -> None:
    async with api.http.put("/v1/images/x", data=raw_disk(), headers=OCTET) as response:
        assert response.status == 401


async def test_disks_attach_and_detach_and_capture_over_http(api: Api, cluster: Cluster) -> None:
    cluster.start_agent("h1")
    await api.wait_hosts("h1")
    status, _ = await api.call("POST", "/v1/vms", {"name": "db-1", "size": "Small"})
    assert status == 201
    await api.wait_state("db-1", "running")
    status, body = await api.call("POST", "/v1/vms/db-1/disks", {"size_mib": 512})
    assert status == 409 and body["error"]["code"] == "invalid_state"  # only when stopped

    await api.call("POST", "/v1/vms/db-1/stop")
    await api.wait_state("db-1", "stopped")
    status, body = await api.call("POST", "/v1/vms/db-1/disks", {"size_mib": 512})
    assert status == 200, body
    data = [d for d in body["vm"]["disks"] if d["kind"] == "data"]
    assert [d["size_mib"] for d in data] == [512]
    status, body = await api.call("DELETE", f"/v1/vms/db-1/disks/{data[0]['disk_id']}")
    assert status == 200 and [d["kind"] for d in body["vm"]["disks"]] == ["os"], body
    status, body = await api.call("DELETE", "/v1/vms/db-1/disks/nope")
    assert status == 400 and body["error"]["code"] == "invalid_request", body

    await api.call("POST", "/v1/vms/db-1/start")
    await api.wait_state("db-1", "running")
    status, body = await api.call("POST", "/v1/vms/db-1/capture", {"image": "snap"})
    assert status == 200 and body["vm"]["name"] == "db-1", body

    async def capture_ended() -> bool:
        _, listed = await api.call("GET", "/v1/images", auth=False)
        states = {i["name"]: i["state"] for i in listed["images"]}
        return states.get("snap") in ("available", "failed")

    # The fake driver keeps no disks: the capture is taken, then fails on the host.
    await wait_until(capture_ended, timeout_s=20, message="capture of db-1 ended")
    status, body = await api.call("POST", "/v1/vms/nobody/capture", {"image": "snap2"})
    assert status == 404 and body["error"]["code"] == "not_found"
