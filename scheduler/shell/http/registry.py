"""The HTTP API's routes, described once: each endpoint carries what the server needs (method,
path, handler, whether it needs the token) and what ``/openapi.json`` says about it (request
and response structs, query struct, error codes).

A module adds routes with a ``register(api: Registry)`` function listed in
``scheduler.shell.http.server.ROUTE_MODULES``::

    def register(api: Registry) -> None:
        api.add(Endpoint("GET", "/v1/usage", get_usage, "getUsage", "Usage per VM and size",
                         tag="usage", query=UsageQuery, response=UsageReply))

Handlers are plain aiohttp handlers; ``backend_of(request)`` gives them the scheduler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec
from aiohttp import web
from nats.aio.client import Client

from common.fields import ErrorCode
from common.messages import CreateVm, HostRef, HostReply, VmRef, VmReply
from scheduler.core.contract import Op

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class Backend(Protocol):
    """What the HTTP front end needs of the scheduler (``SchedulerApp`` provides it)."""

    async def submit(self, op: Op, body: CreateVm | VmRef, *, timeout_s: float = ...) -> VmReply:
        """A VM mutation, answered after commit."""
        ...

    async def submit_host(self, op: Op, body: HostRef, *, timeout_s: float = ...) -> HostReply:
        """A host mutation (cordon, uncordon, drain), answered after commit."""
        ...

    def read(self, subject: str, body: bytes) -> bytes:
        """A read-only API request, same subjects and bodies as over NATS."""
        ...


BACKEND: web.AppKey[Backend] = web.AppKey("stratus_backend")
NATS: web.AppKey[Client] = web.AppKey("stratus_nats")


def backend_of(request: web.Request) -> Backend:
    return request.app[BACKEND]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: Method
    path: str
    """aiohttp path template, e.g. ``/v1/vms/{name}``; OpenAPI uses the same syntax."""
    handler: Handler
    operation_id: str
    summary: str
    tag: str = "api"
    mutating: bool = False
    """Mutating calls always need the bearer token (when one is configured)."""
    public: bool = False
    """Never needs a token (the portal's files, the OpenAPI document)."""
    body: type[msgspec.Struct] | None = None
    """JSON request body."""
    query: type[msgspec.Struct] | None = None
    """Query parameters: the struct's fields."""
    path_params: tuple[tuple[str, type[msgspec.Struct], str], ...] = ()
    """Path parameters: (name, struct, field) whose field schema validates the parameter."""
    response: type[msgspec.Struct] | None = None
    status: int = 200
    media_type: str = "application/json"
    errors: tuple[ErrorCode, ...] = ()
    """Error codes this endpoint can answer with (besides the generic ones)."""
    headers: tuple[tuple[str, str], ...] = ()
    """Optional request headers: (name, description)."""
    in_openapi: bool = True
    subject: str = ""
    """The NATS API subject of the same operation (``stratus.api.<noun>.<verb>``), if any: the
    parity test (tests/unit/test_api_parity.py) checks every subject has its endpoint."""
    raw_body: str = ""
    """Media type of a body that is not JSON (an image's bytes), sent as it is."""


class Registry:
    """The endpoints, in registration order (which is route-matching order)."""

    def __init__(self) -> None:
        self._endpoints: list[Endpoint] = []

    def add(self, endpoint: Endpoint) -> None:
        clash = [
            e
            for e in self._endpoints
            if (e.method, e.path) == (endpoint.method, endpoint.path)
            or e.operation_id == endpoint.operation_id
        ]
        if clash:
            raise ValueError(f"route {endpoint.method} {endpoint.path} registered twice")
        self._endpoints.append(endpoint)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints)
