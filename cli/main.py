"""The ``stratus`` command line: parse arguments, then call the API or run a local cluster."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
import time
import typing
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

import msgspec

from cli import natsconfig, output, simulate
from cli import usage as usage_output
from cli.client import StratusClient, connect
from cli.drain import wait_drained
from common import messages as m
from common.config import AgentConfig
from common.errors import ApiError, StratusError

DISTRIBUTION = "stratus-scheduler"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
REQUEST_TIMEOUT_S = 10.0
WAIT_TIMEOUT_S = 60.0
WAIT_POLL_S = 0.2
PASSTHROUGH = ("scheduler", "agent", "fenceguard")
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
RETRY_HELP = "idempotency key: a retry with the same id returns the first result"
DRIVERS: tuple[str, ...] = typing.get_args(
    {field.name: field.type for field in msgspec.structs.fields(AgentConfig)}["driver"]
)

Handler = Callable[[StratusClient, argparse.Namespace], Awaitable[str]]


# --------------------------------------------------------------------------- commands


async def _print_vm(vm: m.VmInfo, args: argparse.Namespace) -> str:
    return output.to_json(vm) if args.output == "json" else output.vm_table([vm])


async def wait_running(client: StratusClient, name: str, timeout_s: float) -> m.VmInfo:
    """Poll ``name`` until it runs; ``ApiError`` if it fails, is deleted or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        vm = await client.get_vm(name)
        if vm.state is m.VmState.RUNNING:
            return vm
        if vm.state in (m.VmState.FAILED, m.VmState.DELETED):
            raise ApiError(str(vm.state), f"vm '{name}' {vm.state}: {vm.reason or 'no reason'}")
        if time.monotonic() >= deadline:
            why = f" ({vm.reason})" if vm.reason else ""
            raise ApiError("timeout", f"vm '{name}' is still {vm.state}{why} after {timeout_s:g}s")
        await asyncio.sleep(WAIT_POLL_S)


async def _vm_create(client: StratusClient, args: argparse.Namespace) -> str:
    request = m.CreateVm(
        name=args.name,
        size=args.size,
        image=args.image,
        region=args.region,
        availability_set=args.availability_set,
        request_id=args.request_id,
        data_disks_mib=args.data_disk or [],
    )
    vm = await client.create_vm(request)
    if args.wait:
        vm = await wait_running(client, args.name, args.timeout_s or WAIT_TIMEOUT_S)
    return await _print_vm(vm, args)


async def _vm_list(client: StratusClient, args: argparse.Namespace) -> str:
    query = m.ListVms(state=args.state, host=args.host, region=args.region)
    vms = await client.list_vms(query)
    return output.to_json(vms) if args.output == "json" else output.vm_table(vms)


async def _vm_show(client: StratusClient, args: argparse.Namespace) -> str:
    vm = await client.get_vm(args.name)
    return output.to_json(vm) if args.output == "json" else output.vm_details(vm)


async def _vm_stop(client: StratusClient, args: argparse.Namespace) -> str:
    return await _print_vm(await client.stop_vm(args.name, args.request_id), args)


async def _vm_start(client: StratusClient, args: argparse.Namespace) -> str:
    return await _print_vm(await client.start_vm(args.name, args.request_id), args)


async def _vm_delete(client: StratusClient, args: argparse.Namespace) -> str:
    return await _print_vm(await client.delete_vm(args.name, args.request_id), args)


async def _host_list(client: StratusClient, args: argparse.Namespace) -> str:
    hosts = await client.list_hosts()
    return output.to_json(hosts) if args.output == "json" else output.host_table(hosts)


async def _print_host(host: m.HostInfo, args: argparse.Namespace) -> str:
    return output.to_json(host) if args.output == "json" else output.host_table([host])


async def _host_cordon(client: StratusClient, args: argparse.Namespace) -> str:
    return await _print_host(await client.cordon_host(args.host_id, args.request_id), args)


async def _host_uncordon(client: StratusClient, args: argparse.Namespace) -> str:
    return await _print_host(await client.uncordon_host(args.host_id, args.request_id), args)


async def _host_drain(client: StratusClient, args: argparse.Namespace) -> str:
    host = await client.drain_host(args.host_id, args.request_id)
    if args.wait:
        host = await wait_drained(client, host, args.timeout_s or WAIT_TIMEOUT_S, sys.stderr)
    return await _print_host(host, args)


async def _vm_capture(client: StratusClient, args: argparse.Namespace) -> str:
    request = m.CaptureVm(name=args.name, image=args.image, request_id=args.request_id)
    return await _print_vm(await client.capture_vm(request), args)


async def _disk_attach(client: StratusClient, args: argparse.Namespace) -> str:
    request = m.AttachDisk(vm=args.vm, size_mib=args.size_mib, request_id=args.request_id)
    vm = await client.attach_disk(request)
    return output.to_json(vm) if args.output == "json" else output.vm_details(vm)


async def _disk_detach(client: StratusClient, args: argparse.Namespace) -> str:
    request = m.DetachDisk(vm=args.vm, disk_id=args.disk_id, request_id=args.request_id)
    vm = await client.detach_disk(request)
    return output.to_json(vm) if args.output == "json" else output.vm_details(vm)


async def _print_image(image: m.ImageInfo, args: argparse.Namespace) -> str:
    return output.to_json(image) if args.output == "json" else output.image_table([image])


async def _image_list(client: StratusClient, args: argparse.Namespace) -> str:
    images = await client.list_images()
    return output.to_json(images) if args.output == "json" else output.image_table(images)


async def _image_upload(client: StratusClient, args: argparse.Namespace) -> str:
    path: Path = args.file
    image = await client.upload_image(path, args.name, os=args.os, request_id=args.request_id)
    return await _print_image(image, args)


async def _image_delete(client: StratusClient, args: argparse.Namespace) -> str:
    return await _print_image(await client.delete_image(args.name, args.request_id), args)


async def _sizes(client: StratusClient, args: argparse.Namespace) -> str:
    sizes = await client.list_sizes()
    return output.to_json(sizes) if args.output == "json" else output.size_table(sizes)


async def _usage(client: StratusClient, args: argparse.Namespace) -> str:
    report = await client.usage(m.UsageQuery(since=args.since, until=args.until))
    return usage_output.render(report, args.output)


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def disk_size_mib(text: str) -> int:
    """``1G`` -> 1024, ``512M`` (or ``512``) -> 512: a disk size in MiB."""
    value, unit = text.strip().upper().rstrip("IB") or "0", 1
    if value[-1:] in ("G", "M", "T"):
        unit = {"M": 1, "G": 1024, "T": 1024 * 1024}[value[-1]]
        value = value[:-1]
    try:
        size_mib = int(float(value) * unit)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a disk size: {text!r} (like 1G or 512M)") from exc
    if size_mib < 1:
        raise argparse.ArgumentTypeError(f"disk size {text!r} is below 1 MiB")
    return size_mib


def _aware_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is local time."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return value if value.tzinfo else value.astimezone()


async def _call_api(handler: Handler, args: argparse.Namespace) -> str:
    timeout_s = args.timeout_s or REQUEST_TIMEOUT_S
    auth = {"creds": args.creds or "", "nkey_seed": args.nkey_seed or ""}
    nc = await connect(args.nats, timeout_s=min(timeout_s, 5.0), tls_ca=args.tls_ca or "", **auth)
    try:
        return await handler(StratusClient(nc, timeout_s=timeout_s), args)
    finally:
        await nc.close()


# --------------------------------------------------------------------------- parser


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """Global options; accepted before the command (with defaults) and after it (without)."""
    parent = argparse.ArgumentParser(add_help=False)

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    env_url = os.environ.get("STRATUS_NATS") or DEFAULT_NATS_URL
    parent.add_argument(
        "--nats",
        metavar="URL",
        default=default(env_url),
        help=f"NATS server (default: $STRATUS_NATS or {DEFAULT_NATS_URL})",
    )
    parent.add_argument(
        "--creds",
        metavar="FILE",
        default=default(os.environ.get("STRATUS_NATS_CREDS")),
        help="NATS credentials file (default: $STRATUS_NATS_CREDS)",
    )
    parent.add_argument(
        "--nkey-seed",
        metavar="FILE",
        default=default(os.environ.get("STRATUS_NATS_NKEY_SEED")),
        help="NATS nkey seed file (default: $STRATUS_NATS_NKEY_SEED)",
    )
    parent.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=default(os.environ.get("STRATUS_NATS_TLS_CA")),
        help="CA of the NATS server's TLS certificate (default: $STRATUS_NATS_TLS_CA)",
    )
    parent.add_argument(
        "--output",
        "-o",
        choices=("table", "json"),
        default=default("table"),
        help="output format (default: table)",
    )
    parent.add_argument(
        "--timeout",
        dest="timeout_s",
        type=float,
        metavar="S",
        default=default(None),
        help=f"seconds to wait for an answer (default {REQUEST_TIMEOUT_S:g}; "
        f"{WAIT_TIMEOUT_S:g} for --wait)",
    )
    return parent


def _add_vm_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = [_common_options(defaults=False)]
    vm = commands.add_parser("vm", help="create, list, show, stop, start, delete, capture VMs")
    verbs = vm.add_subparsers(dest="verb", required=True, metavar="VERB")

    create = verbs.add_parser("create", parents=common, help="create a VM")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--size", required=True, help="size name, see `stratus sizes`")
    create.add_argument("--image", default="tiny", help="image (default: tiny)")
    create.add_argument("--region", help="region the VM must run in")
    create.add_argument("--availability-set", metavar="SET", help="spread across fault domains")
    create.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    create.add_argument("--wait", action="store_true", help="wait until the VM is running")
    create.add_argument(
        "--data-disk",
        action="append",
        type=disk_size_mib,
        metavar="SIZE",
        help="add an empty data disk, like 1G or 512M (repeatable)",
    )
    create.set_defaults(handler=_vm_create)

    listing = verbs.add_parser("list", parents=common, help="list VMs")
    listing.add_argument("--state", choices=[str(state) for state in m.VmState])
    listing.add_argument("--host", metavar="HOST")
    listing.add_argument("--region")
    listing.set_defaults(handler=_vm_list)

    verb_help = {
        "show": (_vm_show, "show one VM"),
        "stop": (_vm_stop, "stop (deallocate) a VM"),
        "start": (_vm_start, "start a stopped VM"),
        "delete": (_vm_delete, "delete a VM"),
    }
    for verb, (handler, text) in verb_help.items():
        sub = verbs.add_parser(verb, parents=common, help=text)
        sub.add_argument("name", metavar="NAME")
        if verb != "show":
            sub.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
        sub.set_defaults(handler=handler)

    capture = verbs.add_parser("capture", parents=common, help="stop a VM, save it as an image")
    capture.add_argument("name", metavar="NAME")
    capture.add_argument("--image", required=True, help="name of the new gallery image")
    capture.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    capture.set_defaults(handler=_vm_capture)


def _add_storage_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = [_common_options(defaults=False)]
    disk = commands.add_parser("disk", help="attach and detach data disks of stopped VMs")
    disk_verbs = disk.add_subparsers(dest="verb", required=True, metavar="VERB")
    attach = disk_verbs.add_parser("attach", parents=common, help="add an empty data disk")
    attach.add_argument("vm", metavar="VM")
    attach.add_argument("--size-mib", type=int, required=True, metavar="MIB")
    attach.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    attach.set_defaults(handler=_disk_attach)
    detach = disk_verbs.add_parser("detach", parents=common, help="remove a data disk")
    detach.add_argument("vm", metavar="VM")
    detach.add_argument("disk_id", metavar="DISK")
    detach.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    detach.set_defaults(handler=_disk_detach)

    image = commands.add_parser("image", help="list, upload and delete gallery images")
    image_verbs = image.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = image_verbs.add_parser("list", parents=common, help="list images")
    listing.set_defaults(handler=_image_list)
    upload = image_verbs.add_parser("upload", parents=common, help="upload a qcow2 or raw disk")
    upload.add_argument("file", metavar="FILE", type=_existing_file)
    upload.add_argument("--name", required=True, help="image name, [a-z0-9._-]")
    upload.add_argument("--os", default="linux", help="default: linux")
    upload.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    upload.set_defaults(handler=_image_upload)
    delete = image_verbs.add_parser("delete", parents=common, help="delete an image")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    delete.set_defaults(handler=_image_delete)


def _add_host_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = [_common_options(defaults=False)]
    hosts = commands.add_parser("host", help="list, cordon, uncordon and drain hosts")
    verbs = hosts.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("list", parents=common, help="list hosts").set_defaults(handler=_host_list)
    verb_help = {
        "cordon": (_host_cordon, "place no new VMs on a host"),
        "uncordon": (_host_uncordon, "let a cordoned host take VMs again"),
        "drain": (_host_drain, "cordon a host and move its VMs elsewhere"),
    }
    for verb, (handler, text) in verb_help.items():
        sub = verbs.add_parser(verb, parents=common, help=text)
        sub.add_argument("host_id", metavar="HOST")
        sub.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
        if verb == "drain":
            sub.add_argument("--wait", action="store_true", help="show progress until it ends")
        sub.set_defaults(handler=handler)


def _add_local_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser("up", help="run a local cluster in the foreground")
    up.add_argument("--hosts", type=int, default=3, metavar="N", help="host agents (default 3)")
    up.add_argument("--driver", choices=DRIVERS, default="fake", help="hypervisor driver")
    up.add_argument(
        "--agent-config", metavar="FILE", help="TOML file for every agent (deploy/agent.toml)"
    )
    up.add_argument("--capacity", default="16c/64g", help="capacity of each host (16c/64g)")
    up.add_argument("--data-dir", default=".stratus", metavar="DIR", help="default: .stratus")
    up.add_argument("--nats-port", type=int, metavar="P", help="default 4222, else a free one")
    up.add_argument("--timeout", dest="timeout_s", type=float, metavar="S", default=None)
    up.add_argument("--log-level", default="INFO", help="log level of the daemons")
    up.add_argument(
        "--http",
        dest="http_listen",
        nargs="?",
        const=DEFAULT_HTTP_LISTEN,
        default=None,
        metavar="ADDR",
        help=f"also serve the portal and HTTP API (default {DEFAULT_HTTP_LISTEN}), with a "
        "generated bearer token printed at start",
    )

    demo = commands.add_parser("demo", help="self-contained demo: place 12 VMs, kill a host")
    demo.add_argument(
        "--timeout", dest="timeout_s", type=float, metavar="S", help="per phase (default 60)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the data directory and logs")

    for name, text in (
        ("scheduler", "run the scheduler"),
        ("agent", "run a host agent"),
        ("fenceguard", "run a host's fence guard"),
    ):
        commands.add_parser(name, help=f"{text} (options: stratus {name} --help)", add_help=False)


def version() -> str:
    """The installed distribution's version (``stratus-scheduler`` on the package index)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stratus",
        description="Stratus: an event-driven VM cluster scheduler over NATS.",
        parents=[_common_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_vm_commands(commands)
    _add_host_commands(commands)
    _add_storage_commands(commands)
    common = [_common_options(defaults=False)]
    commands.add_parser("sizes", parents=common, help="list VM sizes").set_defaults(handler=_sizes)
    usage = commands.add_parser(
        "usage", parents=common, help="billed hours and cost", conflict_handler="resolve"
    )
    formats = usage_output.FORMATS
    usage.add_argument("--output", "-o", choices=formats, default=argparse.SUPPRESS)
    usage.add_argument("--since", type=_aware_time, metavar="TIME", help="ISO 8601 time")
    usage.add_argument("--until", type=_aware_time, metavar="TIME", help="default: now")
    usage.set_defaults(handler=_usage)
    _add_local_commands(commands)
    simulate.add_parser(commands)
    natsconfig.add_parser(commands)
    return parser


# --------------------------------------------------------------------------- entry point


def _delegate(command: str, argv: list[str]) -> int:
    if command == "scheduler":
        from scheduler.__main__ import main as scheduler_main

        return scheduler_main(argv)
    if command == "fenceguard":
        from hostagent.fenceguard import main as fenceguard_main

        return fenceguard_main(argv)
    from hostagent.__main__ import main as agent_main

    return agent_main(argv)


def _run(args: argparse.Namespace) -> int:
    if args.command == "up":
        from cli.local import run_up

        return run_up(args)
    if args.command == "demo":
        from cli.local import run_demo

        return run_demo(args)
    if args.command == "simulate":
        return simulate.run_simulate(args)
    if args.command == "nats-config":
        return natsconfig.run(args)
    handler: Handler = args.handler
    print(asyncio.run(_call_api(handler, args)))
    return 0


def main(argv: list[str] | None = None, *, stderr: TextIO | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command in PASSTHROUGH:
        return _delegate(args.command, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    err = stderr or sys.stderr
    try:
        return _run(args)
    except ApiError as exc:
        print(output.error_line(exc.code, exc.detail), file=err)
    except StratusError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=err)
    except KeyboardInterrupt:
        print("error: interrupted", file=err)
        return 130
    return 1
