"""The HTTP front end against a fake scheduler: routing, tokens, status mapping, the OpenAPI
document. No NATS; the real-scheduler tests are in tests/integration/test_http.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client

from common import codec, list_messages as lm, messages as m, subjects
from common.config import SchedulerConfig
from scheduler.core.contract import Op
from scheduler.shell.http.errors import STATUS
from scheduler.shell.http.server import build_app, build_registry

TOKEN = "unit-token-7f3e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}
NOW = datetime(2026, 1, 1, tzinfo=UTC)
VM = m.VmInfo(
    name="a",
    size="Small",
    cpu_milli=1000,
    mem_mib=1792,
    image="tiny",
    region=None,
    availability_set=None,
    state=m.VmState.PENDING,
    host=None,
    generation=1,
    reason="",
    created_at=NOW,
    updated_at=NOW,
)


class FakeBackend:
    """Answers every mutation with ``reply`` (or raises ``raises``) and records it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Op, msgspec.Struct]] = []
        self.reply: m.VmReply = m.VmReply(vm=VM)
        self.raises: BaseException | None = None

    async def submit(
        self, op: Op, body: m.CreateVm | m.VmRef, *, timeout_s: float = 10.0
    ) -> m.VmReply:
        self.calls.append((op, body))
        if self.raises is not None:
            raise self.raises
        return self.reply

    async def submit_host(self, op: Op, body: m.HostRef, *, timeout_s: float = 10.0) -> m.HostReply:
        self.calls.append((op, body))
        return m.HostReply(error=m.ErrorBody(m.ErrorCode.NOT_FOUND, "no such host"))

    def read(self, subject: str, body: bytes) -> bytes:
        if subject == subjects.VM_GET:
            return codec.encode(m.VmReply(vm=VM))
        return codec.encode(lm.VmListReply(vms=[VM]))


Make = Callable[..., Any]


@pytest.fixture
async def make_client() -> AsyncIterator[Make]:
    clients: list[TestClient[Any, Any]] = []

    async def make(backend: FakeBackend, **config: object) -> TestClient[Any, Any]:
        settings = msgspec.convert({"http_listen": "127.0.0.1:0", **config}, SchedulerConfig)
        app = build_app(settings, backend, cast(Client, object()))
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def error_of(response: Any) -> str:
    body = await response.json()
    return str(body["error"]["code"])


def test_event_streams_document_each_event_as_an_object() -> None:
    """Before Open API 3.2 the schema of a text/event-stream response describes each event
    (what clients and schemathesis check a stream's events against): an object with its type
    and its data, not a string (a console that answered with its ``attached`` event was
    reported as violating its own document)."""
    from scheduler.shell.http.openapi import build_openapi

    doc = build_openapi(build_registry(), version="1", token=False, token_for_reads=False)
    streams = [
        op["responses"]["200"]["content"]["text/event-stream"]["schema"]
        for path in doc["paths"].values()
        for op in path.values()
        if "text/event-stream" in op["responses"].get("200", {}).get("content", {})
    ]
    assert len(streams) >= 2  # the events and the console
    for schema in streams:
        assert schema["type"] == "object"
        assert schema["properties"]["data"] == {"type": "string"}


def test_every_error_code_has_an_http_status() -> None:
    assert set(STATUS) == set(m.ErrorCode)


@pytest.mark.parametrize("token", [True, False], ids=["token", "no-token"])
def test_openapi_documents_every_route_with_resolvable_schemas(token: bool) -> None:
    from scheduler.shell.http.openapi import build_openapi

    registry = build_registry()
    doc = build_openapi(registry, version="1", token=token, token_for_reads=False, sizes=["Small"])
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(e.method, e.path) for e in registry if e.in_openapi}
    schemas = doc["components"]["schemas"]
    refs = [r for r in _refs(doc["paths"])]
    assert refs and all(r.removeprefix("#/components/schemas/") in schemas for r in refs)
    create = doc["paths"]["/v1/vms"]["post"]
    assert set(create["responses"]) >= {"201", "400", "409", "413", "422"}
    assert ("401" in create["responses"]) is token and ("security" in create) is token
    assert "401" not in doc["paths"]["/v1/vms"]["get"]["responses"]  # reads are open
    assert schemas["CreateVm"]["properties"]["size"]["enum"] == ["Small"]


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_reads_need_the_token_only_when_configured(make_client: Make) -> None:
    open_reads = await make_client(FakeBackend(), api_token=TOKEN)
    assert (await open_reads.get("/v1/vms")).status == 200
    closed = await make_client(FakeBackend(), api_token=TOKEN, api_token_for_reads=True)
    denied = await closed.get("/v1/vms")
    assert denied.status == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
    assert (await closed.get("/v1/vms", headers=AUTH)).status == 200
    assert (await closed.get("/openapi.json")).status == 200  # the documents stay public
    assert (await closed.get("/")).status == 200


async def test_wrong_token_never_reaches_the_scheduler_and_is_never_logged(
    make_client: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = FakeBackend()
    client = await make_client(backend, api_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = await client.post("/v1/vms/a/stop", headers=headers)
        assert response.status == 401 and await error_of(response) == "unauthorized"
    assert backend.calls == []
    assert (await client.post("/v1/vms/a/stop", headers=AUTH)).status == 200
    assert backend.calls == [(Op.STOP, m.VmRef(name="a"))]
    assert any("/v1/vms/a/stop" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (m.ErrorCode.INVALID_STATE, 409),
        (m.ErrorCode.CONFLICT, 409),
        (m.ErrorCode.INSUFFICIENT_CAPACITY, 409),
        (m.ErrorCode.UNKNOWN_SIZE, 422),
        (m.ErrorCode.NOT_FOUND, 404),
    ],
)
async def test_error_replies_get_their_status(
    make_client: Make, code: m.ErrorCode, status: int
) -> None:
    backend = FakeBackend()
    backend.reply = m.VmReply(error=m.ErrorBody(code, "why"))
    client = await make_client(backend)
    response = await client.post("/v1/vms/a/start")
    assert response.status == status
    assert await response.json() == {"error": {"code": code.value, "detail": "why"}}


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [(TimeoutError(), 503, "unavailable"), (RuntimeError("bug"), 500, "internal")],
    ids=["no-answer-in-time", "bug"],
)
async def test_failures_answer_json_and_the_server_stays_up(
    make_client: Make, raised: BaseException, status: int, code: str
) -> None:
    backend = FakeBackend()
    backend.raises = raised
    client = await make_client(backend)
    response = await client.delete("/v1/vms/a")
    assert response.status == status and await error_of(response) == code
    assert (await client.get("/v1/vms/a")).status == 200


@pytest.mark.parametrize(
    "query",
    ["state=null", "state=running&state=stopped", "state=nope", "host=a.b"],
    ids=["null", "repeated", "bad-enum", "bad-host"],
)
async def test_bad_query_is_400(make_client: Make, query: str) -> None:
    client = await make_client(FakeBackend())
    response = await client.get(f"/v1/vms?{query}")
    assert response.status == 400 and await error_of(response) == "invalid_request"


async def test_create_body_is_checked_and_integral_numbers_are_integers(make_client: Make) -> None:
    backend = FakeBackend()
    client = await make_client(backend)
    created = await client.post(
        "/v1/vms",
        data=b'{"name": "a", "size": "Small", "data_disks_mib": [1024.0]}',
        headers={"Idempotency-Key": "k-1", "Content-Type": "application/json"},
    )
    assert created.status == 201 and (await created.json())["vm"]["name"] == "a"
    [(op, body)] = backend.calls
    assert op is Op.CREATE and isinstance(body, m.CreateVm)
    assert body.request_id == "k-1" and body.data_disks_mib == [1024]
    for bad in (b"{", b'{"name": "A"}', b"[]", b'{"name": "a", "size": "Small", "x": 1.5e400}'):
        response = await client.post("/v1/vms", data=bad, headers=JSON_TYPE)
        assert response.status == 400, bad
    too_big = await client.post(
        "/v1/vms", data=b" " * (codec.MAX_MESSAGE_BYTES + 1), headers=JSON_TYPE
    )
    assert too_big.status == 413 and await error_of(too_big) == "too_large"
    assert len(backend.calls) == 1


async def test_unknown_routes_and_methods_answer_json(make_client: Make) -> None:
    client = await make_client(FakeBackend())
    missing = await client.get("/v1/nothing")
    assert missing.status == 404 and await error_of(missing) == "not_found"
    escape = await client.get("/..%2F..%2Fpyproject.toml")
    assert escape.status == 404
    wrong = await client.put("/v1/vms")
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]


async def test_create_body_takes_a_storage_kind_and_refuses_an_unknown_one(
    make_client: Make,
) -> None:
    backend = FakeBackend()
    client = await make_client(backend)
    created = await client.post(
        "/v1/vms",
        data=b'{"name": "a", "size": "Small", "storage": "replicated"}',
        headers=JSON_TYPE,
    )
    assert created.status == 201
    [(_, body)] = backend.calls
    assert isinstance(body, m.CreateVm) and body.storage is m.DiskStorage.REPLICATED
    bad = await client.post(
        "/v1/vms", data=b'{"name": "b", "size": "Small", "storage": "ceph"}', headers=JSON_TYPE
    )
    assert bad.status == 400 and await error_of(bad) == "invalid_request"
    assert len(backend.calls) == 1
