"""The /v1 routes: VMs, hosts and sizes. Same structs as the NATS API; mutations go through the
core loop (answered after commit), reads through the same read API as over NATS."""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec
from aiohttp import web
from multidict import MultiMapping

from common import codec, list_messages as lm, messages as m, subjects
from common.ids import vm_name_problem
from common.paging import PageQuery
from scheduler.core.contract import Op
from scheduler.shell.http.errors import JSON, HttpError, status_of
from scheduler.shell.http.registry import Backend, Endpoint, Registry, backend_of

S = TypeVar("S", bound=msgspec.Struct)

SUBMIT_TIMEOUT_S: Final = 10.0
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
IDEMPOTENCY_HEADER: Final = (
    (IDEMPOTENCY_KEY, "A client request id (1-128 characters): a retry gets the first answer."),
)


class _Peek(msgspec.Struct):
    """Just enough of any reply to tell an error from a success, and a last page from others."""

    error: m.ErrorBody | None = None
    next: str | None = None


_peek: Final = msgspec.json.Decoder(_Peek)


# --------------------------------------------------------------------------- decoding


def _convert(value: object, kind: type[S], what: str, *, strict: bool = True) -> S:
    try:
        return msgspec.convert(value, kind, strict=strict)
    except msgspec.ValidationError as exc:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"{what}: {exc}") from exc


def query_of(request: web.Request, kind: type[S]) -> S:
    return parse_query(request.query, kind)


def parse_query(query: MultiMapping[str], kind: type[S]) -> S:
    """Query parameters as ``kind``: numbers and booleans are parsed from their text, but a
    parameter given is never null (``?state=null`` is refused), nor repeated."""
    repeated = sorted({key for key in query if len(query.getall(key)) > 1})
    if repeated:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"repeated query parameter: {repeated[0]}")
    result = _convert(dict(query), kind, "invalid query", strict=False)
    nulls = sorted(key for key in query if getattr(result, key, "") is None)
    if nulls:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"invalid query: {nulls[0]} is not valid")
    return result


def path_value(request: web.Request, name: str, kind: type[msgspec.Struct], what: str) -> str:
    """The path parameter ``name``, checked against the schema of the field ``name`` of
    ``kind`` (the OpenAPI document declares the same)."""
    value = request.match_info[name]
    field = next(f for f in msgspec.structs.fields(kind) if f.name == name)
    _convert(value, field.type, what)
    return value


def vm_ref(request: web.Request) -> m.VmRef:
    name = request.match_info["name"]
    problem = vm_name_problem(name)
    if problem is not None:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, problem)
    ref = _convert({"name": name}, m.VmRef, "invalid vm name")
    ref.request_id = request_id(request)
    return ref


def host_ref(request: web.Request) -> m.HostRef:
    ref = _convert({"host_id": request.match_info["host_id"]}, m.HostRef, "invalid host id")
    ref.request_id = request_id(request)
    return ref


def request_id(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not 1 <= len(key) <= 128:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"{IDEMPOTENCY_KEY} must be 1-128 characters")
    return key


async def body_of(request: web.Request, kind: type[S], *, vm_field: str | None = None) -> S:
    """The JSON body as ``kind``. As in JSON Schema, a number with no fractional part (``2.0``)
    is an integer. ``vm_field``: the field naming a VM, whose problems are said in words."""
    data = await request.read()  # aiohttp enforces the size limit (413)
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"invalid body: {exc}") from exc
    name = value.get(vm_field) if vm_field is not None and isinstance(value, dict) else None
    problem = vm_name_problem(name) if isinstance(name, str) else None
    if problem is not None:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"invalid body: {problem}")
    return _convert(_integral(value), kind, "invalid body")


def _integral(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


# --------------------------------------------------------------------------- answering


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON)


def reply_response(reply: m.VmReply | m.HostReply, status: int = 200) -> web.Response:
    if reply.error is not None:
        raise HttpError(reply.error.code, reply.error.detail)
    return json_response(codec.encode(reply), status)


def read(
    backend: Backend, subject: str, body: msgspec.Struct, request: web.Request | None = None
) -> web.Response:
    """Answer from the read API; its reply bytes are passed through unless they hold an error.
    A page of a list with more after it links the next page when given its ``request``."""
    raw = backend.read(subject, codec.encode(body))
    peek = _peek.decode(raw)
    if peek.error is not None:
        error = peek.error
        return json_response(codec.encode(m.ErrorReply(error=error)), status_of(error.code))
    response = json_response(raw)
    if peek.next is not None and request is not None:
        link = request.rel_url.update_query(marker=peek.next)
        response.headers["Link"] = f'<{link}>; rel="next"'
    return response


def read_page(request: web.Request, subject: str, kind: type[PageQuery]) -> web.Response:
    """A page of a list (``?limit=&marker=`` and the list's filters): ``next`` in the body
    when more remain, and the same as a ``Link: <...?marker=...>; rel="next"`` header."""
    return read(backend_of(request), subject, query_of(request, kind), request)


async def submit(request: web.Request, op: Op, body: m.CreateVm | m.VmRef) -> m.VmReply:
    try:
        return await backend_of(request).submit(op, body, timeout_s=SUBMIT_TIMEOUT_S)
    except TimeoutError as exc:
        raise HttpError(m.ErrorCode.UNAVAILABLE, "the scheduler did not answer in time") from exc


async def submit_host(request: web.Request, op: Op, *, cold: bool = False) -> m.HostReply:
    ref = host_ref(request)
    ref.cold = cold
    try:
        return await backend_of(request).submit_host(op, ref, timeout_s=SUBMIT_TIMEOUT_S)
    except TimeoutError as exc:
        raise HttpError(m.ErrorCode.UNAVAILABLE, "the scheduler did not answer in time") from exc


# --------------------------------------------------------------------------- handlers


async def list_vms(request: web.Request) -> web.StreamResponse:
    return read_page(request, subjects.VM_LIST, lm.ListVms)


async def create_vm(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, m.CreateVm, vm_field="name")
    if body.request_id is None:
        body.request_id = request_id(request)
    return reply_response(await submit(request, Op.CREATE, body), status=201)


async def get_vm(request: web.Request) -> web.StreamResponse:
    ref = vm_ref(request)
    return read(backend_of(request), subjects.VM_GET, m.VmRef(name=ref.name))


async def delete_vm(request: web.Request) -> web.StreamResponse:
    return reply_response(await submit(request, Op.DELETE, vm_ref(request)))


async def start_vm(request: web.Request) -> web.StreamResponse:
    return reply_response(await submit(request, Op.START, vm_ref(request)))


async def stop_vm(request: web.Request) -> web.StreamResponse:
    return reply_response(await submit(request, Op.STOP, vm_ref(request)))


async def list_hosts(request: web.Request) -> web.StreamResponse:
    return read_page(request, subjects.HOST_LIST, lm.ListHosts)


async def cordon_host(request: web.Request) -> web.StreamResponse:
    return reply_response(await submit_host(request, Op.CORDON))


async def uncordon_host(request: web.Request) -> web.StreamResponse:
    return reply_response(await submit_host(request, Op.UNCORDON))


class DrainQuery(msgspec.Struct, kw_only=True):
    """Query of ``POST /v1/hosts/{host_id}/drain``."""

    cold: bool = False
    """Move the VMs by stop and start rather than live."""


async def drain_host(request: web.Request) -> web.StreamResponse:
    query = parse_query(request.query, DrainQuery)
    return reply_response(await submit_host(request, Op.DRAIN, cold=query.cold))


async def list_sizes(request: web.Request) -> web.StreamResponse:
    return read_page(request, subjects.SIZES_LIST, lm.ListSizes)


# --------------------------------------------------------------------------- the table

_VM_PATH = (("name", m.VmRef, "name"),)
_HOST_PATH = (("host_id", m.HostRef, "host_id"),)
_E = m.ErrorCode


def register(api: Registry) -> None:
    """The /v1 routes for VMs, hosts and sizes."""
    vm, host = "vms", "hosts"
    for endpoint in (
        Endpoint("GET", "/v1/vms", list_vms, "listVms", "List VMs, paged (deleted ones only "
                 "when asked for by state)", tag=vm, query=lm.ListVms, response=lm.VmListReply,
                 subject=subjects.VM_LIST),
        Endpoint("POST", "/v1/vms", create_vm, "createVm", "Create a VM (placed at once when "
                 "capacity allows, else pending with the reason)", tag=vm, mutating=True,
                 body=m.CreateVm, response=m.VmReply, status=201, headers=IDEMPOTENCY_HEADER,
                 subject=subjects.VM_CREATE, errors=(_E.UNKNOWN_SIZE, _E.INVALID_IMAGE,
                 _E.CONFLICT, _E.INVALID_STATE, _E.INSUFFICIENT_CAPACITY, _E.NOT_FOUND,
                 _E.INVALID_NETWORK, _E.ADDRESS_IN_USE)),
        Endpoint("GET", "/v1/vms/{name}", get_vm, "getVm", "Get a VM", tag=vm,
                 path_params=_VM_PATH, response=m.VmReply, errors=(_E.NOT_FOUND,),
                 subject=subjects.VM_GET),
        Endpoint("DELETE", "/v1/vms/{name}", delete_vm, "deleteVm", "Delete a VM (destroyed on "
                 "its host, then recorded deleted)", tag=vm, mutating=True, path_params=_VM_PATH,
                 response=m.VmReply, headers=IDEMPOTENCY_HEADER,
                 errors=(_E.NOT_FOUND, _E.CONFLICT), subject=subjects.VM_DELETE),
        Endpoint("POST", "/v1/vms/{name}/start", start_vm, "startVm", "Start a stopped or "
                 "failed VM", tag=vm, mutating=True, path_params=_VM_PATH, response=m.VmReply,
                 headers=IDEMPOTENCY_HEADER, errors=(_E.NOT_FOUND, _E.INVALID_STATE, _E.CONFLICT),
                 subject=subjects.VM_START),
        Endpoint("POST", "/v1/vms/{name}/stop", stop_vm, "stopVm", "Stop (deallocate) a VM",
                 tag=vm, mutating=True, path_params=_VM_PATH, response=m.VmReply,
                 headers=IDEMPOTENCY_HEADER, errors=(_E.NOT_FOUND, _E.INVALID_STATE, _E.CONFLICT),
                 subject=subjects.VM_STOP),
        Endpoint("GET", "/v1/hosts", list_hosts, "listHosts", "List hosts (paged)", tag=host,
                 query=lm.ListHosts, response=lm.HostListReply, subject=subjects.HOST_LIST),
        Endpoint("POST", "/v1/hosts/{host_id}/cordon", cordon_host, "cordonHost", "Cordon a "
                 "host: no new VMs are placed on it", tag=host, mutating=True,
                 path_params=_HOST_PATH, response=m.HostReply, errors=(_E.NOT_FOUND,),
                 subject=subjects.HOST_CORDON),
        Endpoint("POST", "/v1/hosts/{host_id}/uncordon", uncordon_host, "uncordonHost",
                 "Uncordon a host (and stop its drain, if any)", tag=host, mutating=True,
                 path_params=_HOST_PATH, response=m.HostReply, errors=(_E.NOT_FOUND,),
                 subject=subjects.HOST_UNCORDON),
        Endpoint("POST", "/v1/hosts/{host_id}/drain", drain_host, "drainHost", "Drain a host: "
                 "cordon it and move its VMs to other hosts, live (by stop and start with "
                 "`cold`, or for VMs that cannot migrate; progress in drain_remaining)",
                 tag=host, mutating=True, path_params=_HOST_PATH, response=m.HostReply,
                 query=DrainQuery,
                 errors=(_E.NOT_FOUND, _E.INSUFFICIENT_CAPACITY), subject=subjects.HOST_DRAIN),
        Endpoint("GET", "/v1/sizes", list_sizes, "listSizes", "List VM sizes (paged)",
                 tag="sizes", query=lm.ListSizes, response=lm.SizeListReply,
                 subject=subjects.SIZES_LIST),
    ):  # fmt: skip
        api.add(endpoint)
