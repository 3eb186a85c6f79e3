"""The /v1 routes of virtual networks and endpoints.

Reads go through the same read API as over NATS; mutations to the scheduler's own NATS API
(``stratus.api.vnet.*``, ``stratus.api.vm.endpoint.*``) on its connection, as the disk routes do,
so both faces give the same answers.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from common import messages as m, subjects
from common.network_messages import (
    MAX_ALLOW,
    AddEndpoint,
    CidrField,
    CreateVnet,
    EndpointProtocol,
    ListVnets,
    PortField,
    RemoveEndpoint,
    VnetListReply,
    VnetRef,
    VnetReply,
)
from scheduler.shell.http.errors import HttpError
from scheduler.shell.http.registry import Endpoint, Registry, backend_of
from scheduler.shell.http.routes import (
    IDEMPOTENCY_HEADER,
    body_of,
    parse_query,
    path_value,
    read,
    read_page,
    request_id,
    vm_ref,
)
from scheduler.shell.http.storage import forward


class NewEndpoint(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/vms/{name}/endpoints`` (``AddEndpoint`` without the VM)."""

    vm_port: PortField
    public_port: PortField | None = None
    """The host port asked for; absent: one free on the VM's host."""
    protocol: EndpointProtocol = EndpointProtocol.TCP
    allow: Annotated[list[CidrField], msgspec.Meta(max_length=MAX_ALLOW)] = []


class EndpointQuery(msgspec.Struct, kw_only=True):
    """Query of ``DELETE /v1/vms/{name}/endpoints/{vm_port}``."""

    protocol: EndpointProtocol = EndpointProtocol.TCP


def _vnet_name(request: web.Request) -> str:
    return path_value(request, "name", VnetRef, "invalid network name")


async def list_vnets(request: web.Request) -> web.StreamResponse:
    return read_page(request, subjects.VNET_LIST, ListVnets)


async def create_vnet(request: web.Request) -> web.StreamResponse:
    body = await body_of(request, CreateVnet)
    if body.request_id is None:
        body.request_id = request_id(request)
    return await forward(request, subjects.VNET_CREATE, body, status=201)


async def get_vnet(request: web.Request) -> web.StreamResponse:
    return read(backend_of(request), subjects.VNET_GET, VnetRef(name=_vnet_name(request)))


async def delete_vnet(request: web.Request) -> web.StreamResponse:
    body = VnetRef(name=_vnet_name(request), request_id=request_id(request))
    return await forward(request, subjects.VNET_DELETE, body)


async def add_endpoint(request: web.Request) -> web.StreamResponse:
    ref = vm_ref(request)
    wanted = await body_of(request, NewEndpoint)
    body = AddEndpoint(
        vm=ref.name,
        vm_port=wanted.vm_port,
        public_port=wanted.public_port,
        protocol=wanted.protocol,
        allow=wanted.allow,
        request_id=ref.request_id,
    )
    return await forward(request, subjects.ENDPOINT_ADD, body)


async def remove_endpoint(request: web.Request) -> web.StreamResponse:
    ref = vm_ref(request)
    text = request.match_info["vm_port"]
    try:
        vm_port = msgspec.convert(text, PortField, strict=False)
    except msgspec.ValidationError as exc:
        raise HttpError(m.ErrorCode.INVALID_REQUEST, f"invalid vm port: {exc}") from exc
    query = parse_query(request.query, EndpointQuery)
    body = RemoveEndpoint(
        vm=ref.name, vm_port=vm_port, protocol=query.protocol, request_id=ref.request_id
    )
    return await forward(request, subjects.ENDPOINT_REMOVE, body)


# --------------------------------------------------------------------------- the table

_VNET_PATH = (("name", VnetRef, "name"),)
_VM_PATH = (("name", m.VmRef, "name"),)
_ENDPOINT_PATH = (*_VM_PATH, ("vm_port", RemoveEndpoint, "vm_port"))
_E = m.ErrorCode


def register(api: Registry) -> None:
    """The /v1 routes for networks and endpoints."""
    vnet = "networks"
    for endpoint in (
        Endpoint("GET", "/v1/vnets", list_vnets, "listVnets", "List virtual networks, with "
                 "the addresses used and left", tag=vnet, query=ListVnets,
                 response=VnetListReply, subject=subjects.VNET_LIST),
        Endpoint("POST", "/v1/vnets", create_vnet, "createVnet", "Create a virtual network: an "
                 "IPv4 range from /16 to /29 overlapping no other (its first address is the "
                 "gateway)", tag=vnet, mutating=True, body=CreateVnet, response=VnetReply,
                 status=201, headers=IDEMPOTENCY_HEADER, subject=subjects.VNET_CREATE,
                 errors=(_E.INVALID_NETWORK, _E.CONFLICT, _E.INSUFFICIENT_CAPACITY)),
        Endpoint("GET", "/v1/vnets/{name}", get_vnet, "getVnet", "Get a virtual network",
                 tag=vnet, path_params=_VNET_PATH, response=VnetReply,
                 errors=(_E.NOT_FOUND,), subject=subjects.VNET_GET),
        Endpoint("DELETE", "/v1/vnets/{name}", delete_vnet, "deleteVnet", "Delete a virtual "
                 "network (refused while a VM, even a stopped one, has a NIC in it)", tag=vnet,
                 mutating=True, path_params=_VNET_PATH, response=VnetReply,
                 headers=IDEMPOTENCY_HEADER, subject=subjects.VNET_DELETE,
                 errors=(_E.NOT_FOUND, _E.NETWORK_IN_USE, _E.CONFLICT)),
        Endpoint("POST", "/v1/vms/{name}/endpoints", add_endpoint, "addEndpoint", "Forward a "
                 "port of the VM's host to a port of its first NIC (the public port moves with "
                 "the VM; `address` says where it answers)", tag=vnet, mutating=True,
                 path_params=_VM_PATH, body=NewEndpoint, response=m.VmReply,
                 headers=IDEMPOTENCY_HEADER, subject=subjects.ENDPOINT_ADD,
                 errors=(_E.NOT_FOUND, _E.INVALID_STATE, _E.CONFLICT, _E.ADDRESS_IN_USE,
                         _E.INVALID_NETWORK, _E.INSUFFICIENT_CAPACITY)),
        Endpoint("DELETE", "/v1/vms/{name}/endpoints/{vm_port}", remove_endpoint,
                 "removeEndpoint", "Stop forwarding to a port of the VM", tag=vnet,
                 mutating=True, path_params=_ENDPOINT_PATH, query=EndpointQuery,
                 response=m.VmReply, headers=IDEMPOTENCY_HEADER,
                 subject=subjects.ENDPOINT_REMOVE,
                 errors=(_E.NOT_FOUND, _E.INVALID_STATE, _E.CONFLICT)),
    ):  # fmt: skip
        api.add(endpoint)
