"""Cross-site and rebinding guards of the HTTP front end: with or without a token, a web page in
a browser must not be able to change the cluster (no simple form or ``text/plain`` POST, no
foreign ``Origin``, no foreign ``Host``). Nothing refused reaches the scheduler."""

from __future__ import annotations

from typing import Any

import pytest

from common import messages as m
from scheduler.core.contract import Op
from tests.unit.scheduler.http.test_server import FakeBackend, Make, error_of, make_client

__all__ = ["make_client"]  # the fixture, re-used

BODY = b'{"name": "a", "size": "Small"}'


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        None,
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(
    make_client: Make, content_type: str | None
) -> None:
    backend = FakeBackend()
    client = await make_client(backend)
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await client.post(
        "/v1/vms", data=BODY, headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert response.status == 415 and await error_of(response) == "unsupported_media_type"
    assert backend.calls == []


async def test_a_json_body_is_accepted(make_client: Make) -> None:
    backend = FakeBackend()
    client = await make_client(backend)
    for content_type in ("application/json", "application/json; charset=utf-8"):
        response = await client.post("/v1/vms", data=BODY, headers={"Content-Type": content_type})
        assert response.status == 201
    assert [op for op, _ in backend.calls] == [Op.CREATE, Op.CREATE]


async def test_a_form_post_to_an_action_is_415(make_client: Make) -> None:
    """A ``<form method=post>`` to an action URL carries no JSON and does nothing."""
    backend = FakeBackend()
    client = await make_client(backend)
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        headers = {"Content-Type": content_type}
        response = await client.post("/v1/vms/a/stop", data=b"x=1", headers=headers)
        assert response.status == 415
    assert backend.calls == []
    assert (await client.post("/v1/vms/a/stop")).status == 200  # no body: nothing to type


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1.evil.example:8080"},
        {"Host": "evil.example"},
        {"Host": "evil.example:8080"},
    ],
    ids=["foreign-origin", "null-origin", "suffix-origin", "foreign-host", "foreign-host-port"],
)
async def test_foreign_host_or_origin_is_403_and_changes_nothing(
    make_client: Make, headers: dict[str, str]
) -> None:
    backend = FakeBackend()
    client = await make_client(backend)
    json_type = {"Content-Type": "application/json"}
    response = await client.post("/v1/vms", data=BODY, headers=headers | json_type)
    assert response.status == 403 and await error_of(response) == "forbidden"
    assert (await client.post("/v1/vms/a/stop", headers=headers)).status == 403
    assert (await client.get("/v1/vms", headers=headers)).status == 403
    assert backend.calls == []


async def test_loopback_names_and_configured_hosts_are_allowed(make_client: Make) -> None:
    backend = FakeBackend()
    client = await make_client(backend, http_allowed_hosts=["stratus.example"])
    port = client.port
    allowed: list[dict[str, str]] = [
        {},
        {"Host": f"localhost:{port}"},
        {"Host": f"[::1]:{port}"},
        {"Origin": f"http://127.0.0.1:{port}"},
        {"Host": "stratus.example", "Origin": "https://stratus.example"},
    ]
    for headers in allowed:
        response: Any = await client.post("/v1/vms/a/stop", headers=headers)
        assert response.status == 200, headers
    assert (await client.post("/v1/vms/a/stop", headers={"Host": "127.0.0.1.nip.io"})).status == 403


async def test_the_allow_list_defaults_to_the_listen_address(make_client: Make) -> None:
    client = await make_client(FakeBackend(), http_listen="127.0.0.1:0")
    assert (await client.get("/v1/vms", headers={"Host": "elsewhere.example:8080"})).status == 403
    assert (await client.get("/v1/vms", headers={"Host": "127.0.0.1"})).status == 200


def test_new_codes_have_their_statuses() -> None:
    from scheduler.shell.http.errors import STATUS

    assert STATUS[m.ErrorCode.FORBIDDEN] == 403
    assert STATUS[m.ErrorCode.UNSUPPORTED_MEDIA_TYPE] == 415
    assert STATUS[m.ErrorCode.TOO_MANY_REQUESTS] == 429


def test_openapi_documents_the_guards() -> None:
    from scheduler.shell.http.openapi import build_openapi
    from scheduler.shell.http.server import build_registry

    doc = build_openapi(build_registry(), version="1", token=False, token_for_reads=False)
    paths = doc["paths"]
    assert {"403", "415"} <= set(paths["/v1/vms"]["post"]["responses"])
    assert "415" in paths["/v1/vms/{name}/stop"]["post"]["responses"]
    assert "403" in paths["/v1/vms"]["get"]["responses"]
    assert "415" not in paths["/v1/vms"]["get"]["responses"]
    assert {"403", "429", "503"} <= set(paths["/v1/events"]["get"]["responses"])
