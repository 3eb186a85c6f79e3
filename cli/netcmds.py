"""``stratus vnet create|list|show|delete``, ``stratus vm endpoint add|remove|list`` and the NIC
options of ``stratus vm create`` (``--vnet NAME [--ip ADDR]``, repeatable)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from msgspec.structs import replace

from cli import args as argtypes, output
from cli.client import StratusClient
from cli.verbs import Outcome
from common.network_messages import (
    AddEndpoint,
    CreateVnet,
    EndpointProtocol,
    ListVnets,
    NicRequest,
    RemoveEndpoint,
    VnetInfo,
)

RETRY_HELP = "idempotency key: a retry with the same id returns the first result"


# --------------------------------------------------------------------------- vm create --vnet


class _AddNic(argparse.Action):
    """``--vnet NAME``: one more NIC, in network NAME."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        nics: list[NicRequest] = list(getattr(namespace, "nics", None) or [])
        nics.append(NicRequest(vnet=str(values)))
        namespace.nics = nics


class _SetAddress(argparse.Action):
    """``--ip ADDR``: the address of the NIC of the ``--vnet`` just before it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        nics: list[NicRequest] = list(getattr(namespace, "nics", None) or [])
        if not nics or nics[-1].ip is not None:
            parser.error("--ip follows the --vnet whose NIC it is for (one --ip per --vnet)")
        nics[-1] = replace(nics[-1], ip=str(values))
        namespace.nics = nics


def add_nic_options(create: argparse.ArgumentParser) -> None:
    create.add_argument(
        "--vnet",
        action=_AddNic,
        dest="nics",
        type=argtypes.vnet_name,
        metavar="NAME",
        help="a NIC in virtual network NAME (repeatable: NICs in order)",
    )
    create.add_argument(
        "--ip",
        action=_SetAddress,
        dest="nics",
        metavar="ADDR",
        help="the address of the NIC of the --vnet before it (default: the lowest free one)",
    )


# --------------------------------------------------------------------------- vnet


def _vnet(vnet: VnetInfo, args: argparse.Namespace, note: str = "") -> Outcome:
    json = args.output == "json"
    return Outcome(output.to_json(vnet) if json else output.vnet_table([vnet]), note)


async def vnet_create(client: StratusClient, args: argparse.Namespace) -> Outcome:
    request = CreateVnet(
        name=args.name, cidr=args.cidr, region=args.region, request_id=args.request_id
    )
    vnet = await client.create_vnet(request)
    note = f"network {vnet.name}: gateway {vnet.gateway}, {vnet.addresses_total} addresses"
    return _vnet(vnet, args, note)


async def vnet_list(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vnets = await client.list_vnets(ListVnets(region=args.region))
    json = args.output == "json"
    return Outcome(output.to_json(vnets) if json else output.vnet_table(vnets))


async def vnet_show(client: StratusClient, args: argparse.Namespace) -> Outcome:
    return _vnet(await client.get_vnet(args.name), args)


async def vnet_delete(client: StratusClient, args: argparse.Namespace) -> Outcome:
    return _vnet(await client.delete_vnet(args.name, args.request_id), args)


def add_vnet_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    vnet = commands.add_parser("vnet", help="create, list, show and delete virtual networks")
    verb_parsers = vnet.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verb_parsers.add_parser("create", parents=common, help="create a virtual network")
    create.add_argument("name", metavar="NAME", type=argtypes.vnet_name)
    create.add_argument("--cidr", required=True, help="its IPv4 range, /16 to /29: 10.1.0.0/24")
    create.add_argument("--region", help="only VMs of this region may have a NIC in it")
    create.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    create.set_defaults(handler=vnet_create)
    listing = verb_parsers.add_parser("list", parents=common, help="list virtual networks")
    listing.add_argument("--region")
    listing.set_defaults(handler=vnet_list)
    show = verb_parsers.add_parser("show", parents=common, help="show one virtual network")
    show.add_argument("name", metavar="NAME", type=argtypes.vnet_name)
    show.set_defaults(handler=vnet_show)
    delete = verb_parsers.add_parser(
        "delete", parents=common, help="delete a virtual network no VM has a NIC in"
    )
    delete.add_argument("name", metavar="NAME", type=argtypes.vnet_name)
    delete.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    delete.set_defaults(handler=vnet_delete)


# --------------------------------------------------------------------------- vm endpoint


def _protocol(args: argparse.Namespace) -> EndpointProtocol:
    return EndpointProtocol.UDP if args.udp else EndpointProtocol.TCP


def _endpoints(vm_json: str, table: str, args: argparse.Namespace, note: str = "") -> Outcome:
    return Outcome(vm_json if args.output == "json" else table, note)


async def endpoint_add(client: StratusClient, args: argparse.Namespace) -> Outcome:
    public_port, vm_port = args.port
    protocol = _protocol(args)
    request = AddEndpoint(
        vm=args.name,
        vm_port=vm_port,
        public_port=public_port,
        protocol=protocol,
        allow=args.allow or [],
        request_id=args.request_id,
    )
    vm = await client.add_endpoint(request)
    added = next(e for e in vm.endpoints if (e.vm_port, e.protocol) == (vm_port, protocol))
    if added.public_port is None:
        note = f"{vm.name}:{vm_port}/{protocol} answers once the vm runs on a host"
    else:
        note = f"{vm.name}:{vm_port}/{protocol} answers at {output.endpoint_where(added)}"
    return _endpoints(output.to_json(vm), output.endpoint_table(vm), args, note)


async def endpoint_remove(client: StratusClient, args: argparse.Namespace) -> Outcome:
    _, vm_port = args.port
    request = RemoveEndpoint(
        vm=args.name, vm_port=vm_port, protocol=_protocol(args), request_id=args.request_id
    )
    vm = await client.remove_endpoint(request)
    return _endpoints(output.to_json(vm), output.endpoint_table(vm), args)


async def endpoint_list(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.get_vm(args.name)
    return _endpoints(output.to_json(vm.endpoints), output.endpoint_table(vm), args)


def add_endpoint_commands(
    vm_verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    endpoint = vm_verbs.add_parser(
        "endpoint", help="forward ports of a VM's host to the VM: add, remove, list"
    )
    verb_parsers = endpoint.add_subparsers(dest="endpoint_verb", required=True, metavar="VERB")
    add = verb_parsers.add_parser("add", parents=common, help="forward a host port to the VM")
    remove = verb_parsers.add_parser("remove", parents=common, help="stop forwarding a port")
    for sub, port_help in (
        (add, "PORT or PUBLIC:PORT, like 8022:22 (default public: a free one on the host)"),
        (remove, "the VM's port (PORT, or PUBLIC:PORT as it was added)"),
    ):
        sub.add_argument("name", metavar="NAME", type=argtypes.vm_name)
        sub.add_argument("--port", required=True, type=argtypes.port_pair, help=port_help)
        sub.add_argument("--udp", action="store_true", help="a UDP port (default: TCP)")
        sub.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    add.add_argument(
        "--allow",
        action="append",
        type=argtypes.cidr,
        metavar="CIDR",
        help="only from this range (repeatable; default: anyone who reaches the host)",
    )
    add.set_defaults(handler=endpoint_add)
    remove.set_defaults(handler=endpoint_remove)
    listing = verb_parsers.add_parser("list", parents=common, help="list a VM's endpoints")
    listing.add_argument("name", metavar="NAME", type=argtypes.vm_name)
    listing.set_defaults(handler=endpoint_list)
