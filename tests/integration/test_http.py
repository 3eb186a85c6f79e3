"""The HTTP API against a real scheduler (in this test's event loop) and real agent processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from common.config import SchedulerConfig
from common.natsserver import NatsServer
from rigs.cluster import FAST_TIMINGS, Cluster
from scheduler.shell.app import SchedulerApp
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TOKEN = "it-token-5d41402abc4b2a76"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_TYPE = {"Content-Type": "application/json"}


@dataclass
class Api:
    app: SchedulerApp
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, body: object = None, *, auth: bool = True
    ) -> tuple[int, Any]:
        headers = (AUTH if auth else {}) | JSON_TYPE
        data = None if body is None else json.dumps(body)
        async with self.http.request(method, path, data=data, headers=headers) as response:
            return response.status, await response.json()

    async def vm(self, name: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/v1/vms/{name}")
        assert status == 200, body
        return dict(body["vm"])

    async def hosts(self) -> dict[str, dict[str, Any]]:
        status, body = await self.call("GET", "/v1/hosts", auth=False)
        assert status == 200
        return {h["host_id"]: h for h in body.get("hosts", [])}

    async def wait_state(self, name: str, state: str, timeout_s: float = 20.0) -> dict[str, Any]:
        async def reached() -> bool:
            return bool((await self.vm(name))["state"] == state)

        await wait_until(reached, timeout_s=timeout_s, message=f"{name} {state}")
        return await self.vm(name)

    async def wait_hosts(self, *hosts: str) -> None:
        async def up() -> bool:
            known = await self.hosts()
            return all(known.get(h, {}).get("state") == "up" for h in hosts)

        await wait_until(up, timeout_s=20, message=f"hosts {hosts} up")


@pytest.fixture
async def api(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Api]:
    config = msgspec.convert(
        {
            "nats_url": nats_server.url,
            "db_path": str(tmp_path / "scheduler.db"),
            "http_listen": "127.0.0.1:0",
            "api_token": TOKEN,
            "drain_parallelism": 1,
            **FAST_TIMINGS,
        },
        SchedulerConfig,
    )
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            yield Api(app, http)
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)


async def test_vm_lifecycle_over_http(api: Api, cluster: Cluster) -> None:
    cluster.start_agent("h1")
    await api.wait_hosts("h1")
    status, body = await api.call("POST", "/v1/vms", {"name": "web-1", "size": "Small"})
    assert status == 201 and body["vm"]["state"] in ("pending", "scheduled")
    running = await api.wait_state("web-1", "running")
    assert running["host"] == "h1" and running["generation"] == 1
    status, listed = await api.call("GET", "/v1/vms?state=running", auth=False)
    assert status == 200 and [vm["name"] for vm in listed["vms"]] == ["web-1"]
    status, body = await api.call("POST", "/v1/vms/web-1/stop")
    assert status == 200 and body["vm"]["state"] == "stopping"
    assert (await api.wait_state("web-1", "stopped"))["host"] is None
    status, body = await api.call("POST", "/v1/vms/web-1/start")
    assert status == 200
    assert (await api.wait_state("web-1", "running"))["generation"] == 2  # stop: +1
    status, body = await api.call("DELETE", "/v1/vms/web-1")
    assert status == 200 and body["vm"]["state"] == "deleting"
    await api.wait_state("web-1", "deleted")
    status, sizes = await api.call("GET", "/v1/sizes", auth=False)
    assert status == 200 and {"name": "Small", "cpu_milli": 1000, "mem_mib": 1792} in sizes["sizes"]


ERRORS = [
    ("POST", "/v1/vms", "{not json", 400, "invalid_request"),
    ("POST", "/v1/vms", {"name": "Bad_Name", "size": "Small"}, 400, "invalid_request"),
    ("GET", "/v1/vms/Bad_Name", None, 400, "invalid_request"),
    ("GET", "/v1/vms?state=sleeping", None, 400, "invalid_request"),
    ("GET", "/v1/vms/nobody", None, 404, "not_found"),
    ("POST", "/v1/vms/nobody/stop", None, 404, "not_found"),
    ("POST", "/v1/hosts/nowhere/drain", None, 404, "not_found"),
    ("POST", "/v1/hosts/h1/drain?cold=maybe", None, 400, "invalid_request"),
    ("POST", "/v1/vms/nobody/migrate", {}, 404, "not_found"),
    ("POST", "/v1/vms/nobody/migrate", {"to": "no such host"}, 400, "invalid_request"),
    ("POST", "/v1/vms/nobody/migrate/cancel", None, 404, "not_found"),
    ("GET", "/v1/nothing", None, 404, "not_found"),
    ("POST", "/v1/vms", {"name": "taken", "size": "Medium"}, 409, "conflict"),
    ("POST", "/v1/vms", {"name": "huge", "size": "A7"}, 409, "insufficient_capacity"),
    ("POST", "/v1/vms", {"name": "odd", "size": "Gigantic"}, 422, "unknown_size"),
    ("POST", "/v1/vms", {"name": "odd", "size": "Small", "image": "nope"}, 422, "invalid_image"),
    ("POST", "/v1/vms", "x" * 70_000, 413, "too_large"),
    ("PATCH", "/v1/vms", None, 405, "invalid_request"),
]


async def test_errors_have_their_http_status_and_json_body(api: Api, cluster: Cluster) -> None:
    cluster.start_agent("h1", capacity="8c/16g")
    await api.wait_hosts("h1")
    assert (await api.call("POST", "/v1/vms", {"name": "taken", "size": "Small"}))[0] == 201
    for method, path, body, status, code in ERRORS:
        data = body if isinstance(body, str) else None if body is None else json.dumps(body)
        headers = AUTH | JSON_TYPE
        async with api.http.request(method, path, data=data, headers=headers) as response:
            assert (response.status, response.content_type) == (status, "application/json"), path
            error = (await response.json())["error"]
        assert error["code"] == code and error["detail"], (method, path)
    status, listed = await api.call("GET", "/v1/vms")
    assert [vm["name"] for vm in listed["vms"]] == ["taken"]  # no error left anything behind


async def test_missing_or_wrong_token_is_401_and_changes_nothing(
    api: Api, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cluster.start_agent("h1")
    await api.wait_hosts("h1")
    assert (await api.call("POST", "/v1/vms", {"name": "keep", "size": "Small"}))[0] == 201
    await api.wait_state("keep", "running")
    mutations = [
        ("POST", "/v1/vms", {"name": "intruder", "size": "Small"}),
        ("POST", "/v1/vms/keep/stop", None),
        ("DELETE", "/v1/vms/keep", None),
        ("POST", "/v1/hosts/h1/cordon", None),
        ("POST", "/v1/hosts/h1/drain", None),
    ]
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"X-Token": TOKEN}]
    for method, path, body in mutations:
        for headers in wrong:
            data = None if body is None else json.dumps(body)
            typed = headers | JSON_TYPE
            async with api.http.request(method, path, data=data, headers=typed) as response:
                assert response.status == 401, (method, path, headers)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert (await response.json())["error"]["code"] == "unauthorized"
    status, listed = await api.call("GET", "/v1/vms", auth=False)  # reads are open here
    assert status == 200 and [(v["name"], v["state"]) for v in listed["vms"]] == [
        ("keep", "running")
    ]
    host = (await api.hosts())["h1"]
    assert not host["cordoned"] and not host["draining"]
    assert TOKEN not in caplog.text
    assert "path=/v1/hosts/h1/drain status=401" in caplog.text  # the access log was captured


async def test_cordon_drain_and_the_event_stream_over_http(api: Api, cluster: Cluster) -> None:
    cluster.start_agent("h1", capacity="4c/8g", fault_domain="fd-1")
    cluster.start_agent("h2", capacity="4c/8g", fault_domain="fd-2")
    await api.wait_hosts("h1", "h2")
    status, body = await api.call("POST", "/v1/hosts/h2/cordon")
    assert status == 200 and body["host"]["cordoned"] is True
    for name in ("a", "b"):
        assert (await api.call("POST", "/v1/vms", {"name": name, "size": "Medium"}))[0] == 201
    assert {(await api.wait_state(n, "running"))["host"] for n in ("a", "b")} == {"h1"}
    assert (await api.call("POST", "/v1/hosts/h2/uncordon"))[0] == 200

    status, body = await api.call("POST", "/v1/hosts/h1/drain?cold=true")  # stop, then start
    assert status == 200 and body["host"]["draining"] and body["host"]["drain_remaining"] == 2

    async def drained() -> bool:
        return not (await api.hosts())["h1"]["draining"]

    await wait_until(drained, timeout_s=20, message="h1 drained")
    for name in ("a", "b"):
        vm = await api.wait_state(name, "running")
        assert vm["host"] == "h2" and vm["generation"] == 2
    # h2 is full and h1 cordoned: draining h2 has nowhere to go.
    status, body = await api.call("POST", "/v1/hosts/h2/drain")
    assert status == 409 and body["error"]["code"] == "insufficient_capacity"
    assert not (await api.hosts())["h2"]["cordoned"]

    # The whole story is on the event stream, replayed from the start with ?since=0.
    events = await read_events(api, "/v1/events?since=0", until="drain complete")
    reasons = [e["reason"] for e in events if e["type"] == "host" and e["host_id"] == "h1"]
    assert reasons[-1] == "drain complete" and "drain started" in reasons
    states = [e["state"] for e in events if e["type"] == "vm" and e["name"] == "a"]
    assert in_order(states, ["running", "stopping", "pending", "scheduled", "running"])


def in_order(seen: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` appears in ``seen`` in this order (other items may come between)."""
    rest = iter(seen)
    return all(item in rest for item in expected)


async def read_events(
    api: Api, path: str, *, until: str, on_open: Callable[[], Awaitable[None]] | None = None
) -> list[dict[str, Any]]:
    """Read server-sent events until one whose reason is ``until``, checking the framing.
    ``on_open`` runs once the server says the stream is subscribed (its first comment)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10), api.http.get(path) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        frame: dict[str, str] = {}
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line == ": stratus events" and on_open is not None:
                await on_open()
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(": ")
                frame[key] = value
                continue
            if "data" not in frame:
                continue  # a blank line after comments: nothing to dispatch
            event = json.loads(frame["data"])
            assert frame["event"] == event["type"] and int(frame["id"]) > 0
            events.append(event)
            frame = {}
            if event.get("reason") == until:
                return events
    raise AssertionError(f"stream ended before {until!r}")


async def test_event_stream_sends_new_events_live(api: Api) -> None:
    async def create() -> None:
        assert (await api.call("POST", "/v1/vms", {"name": "live", "size": "Small"}))[0] == 201

    events = await read_events(api, "/v1/events", until="waiting for placement", on_open=create)
    assert [(e["type"], e["name"], e["state"]) for e in events] == [("vm", "live", "pending")]
    status, body = await api.call("GET", "/v1/events?since=-1", auth=False)
    assert status == 400 and body["error"]["code"] == "invalid_request"


async def test_event_streams_are_bounded_per_client(api: Api) -> None:
    """One client (address) holds at most ``http_max_streams_per_client`` streams; more get 429,
    and a closed stream frees its place."""
    limit = api.app.config.http_max_streams_per_client
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for _ in range(limit):
            response = await stack.enter_async_context(api.http.get("/v1/events"))
            assert response.status == 200
            assert (await response.content.readline()).startswith(b": stratus events")
            opened.append(response)
        status, body = await api.call("GET", "/v1/events")
        assert status == 429 and body["error"]["code"] == "too_many_requests"
        opened[0].close()

        async def freed() -> bool:
            async with api.http.get("/v1/events") as response:
                return response.status == 200

        await wait_until(freed, timeout_s=5, message="a closed stream frees its place")


async def test_empty_lists_are_lists(api: Api) -> None:
    for path, key in (("/v1/vms", "vms"), ("/v1/hosts", "hosts"), ("/v1/vms?state=failed", "vms")):
        status, body = await api.call("GET", path, auth=False)
        assert (status, body) == (200, {key: []}), path


async def test_placed_vms_are_found_by_their_hosts_region(api: Api, cluster: Cluster) -> None:
    cluster.start_agent("h1")  # region "local", the agent's default
    await api.wait_hosts("h1")
    assert (await api.call("POST", "/v1/vms", {"name": "web-1", "size": "Small"}))[0] == 201
    await api.wait_state("web-1", "running")
    status, listed = await api.call("GET", "/v1/vms?region=local", auth=False)
    assert status == 200 and [(v["name"], v["region"]) for v in listed["vms"]] == [
        ("web-1", "local")
    ]
    assert (await api.call("GET", "/v1/vms?region=mars", auth=False))[1] == {"vms": []}


BAD_NAMES = [
    ("POST", "/v1/vms", {"name": "Web_1", "size": "Small"}),
    ("GET", "/v1/vms/Web_1", None),
    ("POST", "/v1/vms/Web_1/stop", None),
    ("POST", "/v1/vms/Web_1/capture", {"image": "snap"}),
]


async def test_a_bad_vm_name_is_explained_in_words(api: Api) -> None:
    for method, path, body in BAD_NAMES:
        status, reply = await api.call(method, path, body)
        detail = reply["error"]["detail"]
        assert status == 400 and "lowercase letters, digits and '-'" in detail, detail
        assert "regex" not in detail and "'Web_1'" in detail
    assert (await api.call("GET", "/v1/vms"))[1] == {"vms": []}  # nothing was created
