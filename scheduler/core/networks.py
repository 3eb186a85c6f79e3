"""Virtual networks in the core: networks, the NICs of VMs and their addresses, endpoints. Pure.

- A network is an IPv4 range (/16 to /29) overlapping no other, with a VNI of its own (from
  4096 up, never used twice) and its first address as the gateway (the bridge on each host).
- A VM's NICs are asked for at create: each gets a MAC (``52:54:00`` + a counter never turned
  back) and an address (the one asked for, or the lowest free one). The address is the VM's
  until it is deleted: stop/start, failover and drain move the VM, never its address. A network
  with no free address leaves the VM ``pending`` (``no_address``) until one is released.
- A network with a region takes only VMs of that region: a VM that names no region gets the
  network's (so placement, unchanged, keeps it there), one that names another is refused at
  create. Checked once at create rather than as a placement filter: placement stays as fast,
  and the VM record itself says where it may run.
- Endpoints forward a port of the VM's host to a port of its first NIC. The VM keeps the wish
  (its port, protocol, allowed sources, the public port asked for); the public port is taken
  from its host's ports when it is placed (the one it had before, if free there) and given
  back when it leaves.

Errors are typed and change nothing. A host's desired network state and its delivery are in
``hostnets.py``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from msgspec.structs import replace

from common.fields import ErrorBody, ErrorCode
from common.ids import HostId, VmName
from common.messages import VmReply, VmState
from common.network_messages import (
    MAX_ENDPOINTS,
    AddEndpoint,
    CreateVnet,
    NicRequest,
    RemoveEndpoint,
    VnetInfo,
    VnetRef,
    VnetReply,
)
from scheduler.core.context import KEEP, Keep, StepContext
from scheduler.core.views import vm_error
from scheduler.state.cluster import ClusterState
from scheduler.state.ipam import MAX_PREFIX, MIN_PREFIX, Ipam, ip_int, ip_text
from scheduler.state.model import VmRecord
from scheduler.state.storage import EndpointRecord, NicRecord, VnetRecord

MAX_VNI = 2**24 - 1
MAX_MAC_SERIAL = 2**24 - 1
NO_ADDRESS = "no_address"


def mac_of(serial: int) -> str:
    """The MAC of NIC ``serial`` (0 .. ``MAX_MAC_SERIAL``): QEMU's prefix, then the serial's
    three bytes (one call to ``bytes.hex``: a third of the time of formatting each byte)."""
    return "52:54:00:" + serial.to_bytes(3, "big").hex(":")


# --------------------------------------------------------------------------- views


def vnet_error(code: ErrorCode, detail: str) -> VnetReply:
    return VnetReply(error=ErrorBody(code=code, detail=detail))


def live_vnet(state: ClusterState, name: str) -> VnetRecord | None:
    record = state.vnets.get(name)
    return None if record is None or record.deleted else record


def vnet_info(state: ClusterState, record: VnetRecord) -> VnetInfo:
    ipam = state.net.ipams.get(record.name) if not record.deleted else None
    if ipam is None:
        ipam = Ipam(record.cidr)  # a tombstone: nothing held
    return VnetInfo(
        name=record.name,
        cidr=record.cidr,
        region=record.region,
        vni=record.vni,
        gateway=ip_text(ipam.gateway),
        addresses_total=ipam.total,
        addresses_used=ipam.used,
        vms=state.net.users.get(record.name, 0) if not record.deleted else 0,
        created_at=record.created_at,
    )


def listed_vnets(state: ClusterState, region: str | None = None) -> list[VnetInfo]:
    return [
        vnet_info(state, record)
        for _, record in sorted(state.vnets.items())
        if not record.deleted and (region is None or record.region == region)
    ]


# --------------------------------------------------------------------------- networks


def vnet_op(ctx: StepContext, body: CreateVnet | VnetRef) -> VnetReply:
    """Create or delete a network (answered at once)."""
    if isinstance(body, CreateVnet):
        return _create_vnet(ctx, body)
    return _delete_vnet(ctx, body.name)


def cidr_problem(text: str, others: Iterable[VnetRecord]) -> str | None:
    """Why ``text`` cannot be a new network's range beside ``others`` (None if it can)."""
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        try:
            loose = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            return f"{text!r} is not an IPv4 network like 10.1.0.0/24"
        return f"{text} has host bits set: did you mean {loose}?"
    if net.prefixlen < MIN_PREFIX:
        return (
            f"{net} is too large: a network is at most a /{MIN_PREFIX} (one layer-2 segment "
            "flooded to every host carrying it does not grow well past that; use several)"
        )
    if net.prefixlen > MAX_PREFIX:
        return f"{net} is too small: a network is at least a /{MAX_PREFIX} (5 addresses for VMs)"
    if net.is_multicast or net.is_loopback or net.is_link_local or net.is_unspecified:
        return f"{net} is a reserved range (multicast, loopback, link-local or unspecified)"
    if net.is_reserved:
        return f"{net} is a reserved range"
    for other in others:
        if not other.deleted and net.overlaps(ipaddress.IPv4Network(other.cidr)):
            return f"{net} overlaps network {other.name} ({other.cidr})"
    return None


def _create_vnet(ctx: StepContext, body: CreateVnet) -> VnetReply:
    state = ctx.state
    existing = live_vnet(state, body.name)
    if existing is not None:
        if (existing.cidr, existing.region) == (_canonical(body.cidr), body.region):
            return VnetReply(vnet=vnet_info(state, existing))  # a repeat: the same network
        detail = f"network {body.name!r} exists with another range or region ({existing.cidr})"
        return vnet_error(ErrorCode.CONFLICT, detail)
    problem = cidr_problem(body.cidr, state.vnets.values())
    if problem is not None:
        return vnet_error(ErrorCode.INVALID_NETWORK, problem)
    if state.counters.vni >= MAX_VNI:
        return vnet_error(ErrorCode.INSUFFICIENT_CAPACITY, "every VXLAN network id is used")
    counters = state.count_up()
    counters.vni += 1
    record = VnetRecord(
        name=body.name,
        cidr=str(ipaddress.IPv4Network(body.cidr)),
        region=body.region,
        vni=counters.vni,
        created_at=ctx.now.wall,
    )
    state.put_vnet(record)
    state.vnet_changed(record.name)
    return VnetReply(vnet=vnet_info(state, record))


def _canonical(cidr: str) -> str:
    try:
        return str(ipaddress.IPv4Network(cidr, strict=False))
    except ValueError:
        return cidr


def _delete_vnet(ctx: StepContext, name: str) -> VnetReply:
    state = ctx.state
    record = state.vnets.get(name)
    if record is None:
        return vnet_error(ErrorCode.NOT_FOUND, f"network {name!r} does not exist")
    if record.deleted:
        return VnetReply(vnet=vnet_info(state, record))  # deleting twice changes nothing
    users = state.net.users.get(name, 0)
    if users:
        names = sorted(
            vm.name
            for vm in state.vms.values()
            if vm.state is not VmState.DELETED and any(nic.vnet == name for nic in vm.nics)
        )
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        detail = f"network {name!r} has {users} vm(s) with a NIC in it ({shown}): delete them first"
        return vnet_error(ErrorCode.NETWORK_IN_USE, detail)
    record.deleted = True
    state.put_vnet(record)
    state.vnet_changed(name)
    return VnetReply(vnet=vnet_info(state, record))


# --------------------------------------------------------------------------- NICs


@dataclass(frozen=True, slots=True)
class NicPlan:
    """A NIC a new VM will get, checked: its network, and the address asked for (if any)."""

    vnet: VnetRecord
    address: int | None


def plan_nics(
    state: ClusterState, requests: list[NicRequest], region: str | None
) -> tuple[list[NicPlan], str | None] | VmReply:
    """Check a create's NICs, changing nothing; the plans and the VM's region (the network's,
    when the VM named none), or the error."""
    plans: list[NicPlan] = []
    for request in requests:
        vnet = live_vnet(state, request.vnet)
        if vnet is None:
            known = ", ".join(v.name for v in listed_vnets(state)) or "none"
            detail = f"unknown network {request.vnet!r}; known: {known}"
            return vm_error(ErrorCode.NOT_FOUND, detail)
        if any(plan.vnet.name == vnet.name for plan in plans):
            detail = f"two NICs in network {vnet.name!r}: a vm has one NIC per network"
            return vm_error(ErrorCode.INVALID_NETWORK, detail)
        if vnet.region is not None and region not in (None, vnet.region):
            detail = f"network {vnet.name!r} is in region {vnet.region!r}, the vm in {region!r}"
            return vm_error(ErrorCode.INVALID_NETWORK, detail)
        region = vnet.region or region
        address = None if request.ip is None else _asked_address(state, vnet, request.ip)
        if isinstance(address, VmReply):
            return address
        plans.append(NicPlan(vnet, address))
    return plans, region


def _asked_address(state: ClusterState, vnet: VnetRecord, text: str) -> int | VmReply:
    try:
        address = ip_int(text)
    except ValueError:
        return vm_error(ErrorCode.INVALID_NETWORK, f"{text!r} is not an IPv4 address")
    ipam = state.net.ipams[vnet.name]
    problem = ipam.problem(address)
    if problem is not None:
        detail = f"address {text} {problem} of network {vnet.name} ({vnet.cidr})"
        return vm_error(ErrorCode.INVALID_NETWORK, detail)
    if not ipam.is_free(address):
        owner = holder_of(state, vnet.name, text)
        detail = f"address {text} of network {vnet.name} is held by vm {owner}"
        return vm_error(ErrorCode.ADDRESS_IN_USE, detail)
    return address


def holder_of(state: ClusterState, vnet: str, ip: str) -> str:
    """The VM holding ``ip`` in ``vnet`` (a scan: for error messages only)."""
    for record in state.vms.values():
        if record.state is not VmState.DELETED and any(
            nic.vnet == vnet and nic.ip == ip for nic in record.nics
        ):
            return record.name
    return "?"


def new_nics(state: ClusterState, plans: list[NicPlan]) -> list[NicRecord]:
    """The NICs of ``plans``, with new MACs and their addresses (empty where the network has
    none free). The addresses are held once a record holds the NICs."""
    counters = state.count_up()
    nics = []
    for index, plan in enumerate(plans):
        counters.mac_serial += 1
        ipam = state.net.ipams[plan.vnet.name]
        address = plan.address if plan.address is not None else ipam.next_free()
        nics.append(
            NicRecord(
                index=index,
                vnet=plan.vnet.name,
                vni=plan.vnet.vni,
                mac=mac_of(counters.mac_serial % (MAX_MAC_SERIAL + 1)),
                ip="" if address is None else ip_text(address),
                prefix_len=ipam.prefix,
                gateway=ipam.gateway_text,
            )
        )
    return nics


def missing_address(nics: list[NicRecord]) -> str:
    """The ``no_address`` reason of a VM one of whose NICs has no address; "" if none."""
    for nic in nics:
        if not nic.ip:
            return f"{NO_ADDRESS}: network {nic.vnet} has no free address"
    return ""


def ensure_addresses(ctx: StepContext, record: VmRecord) -> bool:
    """A pending VM about to be placed: give its NICs the addresses they lack (all or none);
    False, with the reason ``no_address``, when a network still has none free."""
    if all(nic.ip for nic in record.nics):
        return True
    nics = []
    for nic in record.nics:
        ipam = ctx.state.net.ipams.get(nic.vnet)
        address = ipam.next_free() if ipam is not None and not nic.ip else None
        if nic.ip or address is not None:
            nics.append(nic if address is None else replace(nic, ip=ip_text(address)))
            continue
        reason = missing_address([nic])
        if record.reason != reason:
            ctx.change_vm(record, reason=reason)
            ctx.emit_vm(record)
        return False
    ctx.change_vm(record, nics=nics, reason="waiting for placement")
    return True


def region_of(state: ClusterState, requests: list[NicRequest], region: str | None) -> str | None:
    """The region of a VM that asks for ``region`` and NICs in the networks of ``requests``."""
    for request in requests:
        vnet = live_vnet(state, request.vnet)
        if region is None and vnet is not None:
            region = vnet.region
    return region


def same_nics(record: VmRecord, requests: list[NicRequest]) -> bool:
    """A create repeated: the same networks, and the addresses asked for are the VM's."""
    if [nic.vnet for nic in record.nics] != [request.vnet for request in requests]:
        return False
    return all(r.ip is None or r.ip == nic.ip for nic, r in zip(record.nics, requests, strict=True))


# --------------------------------------------------------------------------- endpoints


def allow_problem(ranges: list[str]) -> str | None:
    for text in ranges:
        try:
            ipaddress.IPv4Network(text)
        except ValueError:
            return f"allow range {text!r} is not an IPv4 network like 203.0.113.0/24"
    return None


def endpoint_op(ctx: StepContext, body: AddEndpoint | RemoveEndpoint) -> VmName | VmReply:
    record = ctx.state.vms.get(VmName(body.vm))
    if record is None or record.state is VmState.DELETED:
        return vm_error(ErrorCode.NOT_FOUND, f"vm {body.vm!r} does not exist")
    if record.state is VmState.DELETING:
        return vm_error(ErrorCode.INVALID_STATE, f"vm {body.vm!r} is being deleted")
    key = (body.vm_port, body.protocol)
    found = next((e for e in record.endpoints if (e.vm_port, e.protocol) == key), None)
    if isinstance(body, RemoveEndpoint):
        if found is None:
            detail = f"vm {body.vm!r} has no endpoint to port {body.vm_port}/{body.protocol}"
            return vm_error(ErrorCode.NOT_FOUND, detail)
        ctx.change_vm(record, endpoints=[e for e in record.endpoints if e is not found])
        return record.name
    return _add_endpoint(ctx, record, body, found)


def _add_endpoint(
    ctx: StepContext, record: VmRecord, body: AddEndpoint, found: EndpointRecord | None
) -> VmName | VmReply:
    if not record.nics:
        detail = f"vm {record.name!r} has no NIC: an endpoint forwards to its first NIC"
        return vm_error(ErrorCode.INVALID_NETWORK, detail)
    problem = allow_problem(body.allow)
    if problem is not None:
        return vm_error(ErrorCode.INVALID_NETWORK, problem)
    allow = sorted({str(ipaddress.IPv4Network(text)) for text in body.allow})
    if found is not None:
        if (found.allow, found.requested_port) == (allow, body.public_port):
            return record.name  # a repeat
        detail = f"vm {record.name!r} forwards port {body.vm_port}/{body.protocol} already"
        return vm_error(ErrorCode.CONFLICT, detail + " (remove that endpoint first)")
    if len(record.endpoints) >= MAX_ENDPOINTS:
        detail = f"a vm has at most {MAX_ENDPOINTS} endpoints"
        return vm_error(ErrorCode.INVALID_REQUEST, detail)
    asked = (body.protocol, body.public_port)
    if body.public_port is not None and any(
        (e.protocol, e.requested_port) == asked for e in record.endpoints
    ):
        detail = f"vm {record.name!r} asked for public port {body.public_port} already"
        return vm_error(ErrorCode.ADDRESS_IN_USE, detail)
    endpoint = EndpointRecord(
        vm_port=body.vm_port,
        protocol=body.protocol,
        allow=allow,
        requested_port=body.public_port,
    )
    host = record.host if record.holds_capacity else None
    if host is not None:
        placed = _on_host(ctx, record.name, host, [endpoint], strict=True)
        if isinstance(placed, VmReply):
            return placed
        endpoint = placed[0]
    ctx.change_vm(record, endpoints=[*record.endpoints, endpoint])
    return record.name


def placed_endpoints(
    ctx: StepContext, record: VmRecord, host: HostId
) -> list[EndpointRecord] | Keep:
    """The VM's endpoints once it is placed on ``host`` (each on the port it had before if
    that is free there, else the one asked for, else one from the pool)."""
    if not record.endpoints:
        return KEEP
    placed = _on_host(ctx, record.name, host, record.endpoints, strict=False)
    assert not isinstance(placed, VmReply)
    return placed


def unplaced_endpoints(record: VmRecord) -> list[EndpointRecord] | Keep:
    """The VM's endpoints once it leaves its host: no port, no address (the port is kept as
    the one to try first on the next host)."""
    if not record.endpoints:
        return KEEP
    return [replace(e, public_port=None, address=None) for e in record.endpoints]


def _on_host(
    ctx: StepContext, vm: VmName, host: HostId, endpoints: list[EndpointRecord], *, strict: bool
) -> list[EndpointRecord] | VmReply:
    """``endpoints`` with ports of ``host``. ``strict``: the port asked for or an error."""
    net, config = ctx.state.net, ctx.config
    host_record = ctx.state.hosts.get(host)
    address = host_record.underlay_ip if host_record is not None else ""
    chosen: set[tuple[str, int]] = set()

    def free(protocol: str, port: int | None) -> bool:
        if port is None or (protocol, port) in chosen:
            return False
        owner = net.port_owner(host, (protocol, port))
        return owner is None or owner == vm

    placed = []
    for endpoint in endpoints:
        protocol = endpoint.protocol.value
        if (
            strict
            and endpoint.requested_port is not None
            and not free(protocol, endpoint.requested_port)
        ):
            detail = f"public port {endpoint.requested_port}/{protocol} is taken on {host}"
            return vm_error(ErrorCode.ADDRESS_IN_USE, detail)
        wishes = (endpoint.previous_port, endpoint.requested_port)
        port = next((p for p in wishes if free(protocol, p)), None)
        if port is None:
            pool = range(config.endpoint_port_min, config.endpoint_port_max + 1)
            port = next((p for p in pool if free(protocol, p)), None)
        if port is None and strict:
            detail = f"no free public port for {protocol} on {host}"
            return vm_error(ErrorCode.INSUFFICIENT_CAPACITY, detail)
        if port is not None:
            chosen.add((protocol, port))
        placed.append(
            replace(
                endpoint,
                public_port=port,
                address=(address or None) if port is not None else None,
                previous_port=port if port is not None else endpoint.previous_port,
            )
        )
    return placed


def host_moved(ctx: StepContext, host: HostId) -> None:
    """The host came up or changed its underlay address: its peers and its VMs' endpoints
    say where it is now."""
    state = ctx.state
    record = state.hosts[host]
    for vnet in state.net.vnets_of(host):
        state.net.dirty_vnets.add(vnet)
    state.net.dirty_hosts.add(host)
    address = record.underlay_ip or None
    for name in sorted(state.by_host.get(host, ())):
        vm = state.vms[name]
        if any(e.public_port is not None and e.address != address for e in vm.endpoints):
            ctx.change_vm(vm, endpoints=[_at(e, address) for e in vm.endpoints])


def _at(endpoint: EndpointRecord, address: str | None) -> EndpointRecord:
    return replace(endpoint, address=address if endpoint.public_port is not None else None)
