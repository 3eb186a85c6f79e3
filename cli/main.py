"""The ``stratus`` command line: parse arguments, then call the API or run a local cluster."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import sys
import typing
from typing import TextIO

import msgspec

from cli import (
    args as argtypes,
    completion,
    console,
    contexts,
    natsconfig,
    netcmds,
    output,
    simulate,
    usage as usage_output,
    verbs,
)
from cli.client import StratusClient, connect
from cli.contexts import DEFAULT_NATS_URL
from cli.verbs import WAIT_TIMEOUT_S, Outcome, Verb
from common import messages as m
from common.config import AgentConfig
from common.errors import ApiError, StratusError

DISTRIBUTION = "stratus-scheduler"
REQUEST_TIMEOUT_S = 10.0
PASSTHROUGH = ("scheduler", "agent", "fenceguard")
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
RETRY_HELP = "idempotency key: a retry with the same id returns the first result"
STORAGE = "replicated (copies in distinct fault domains) or host-local; default: the cluster's"
DRIVERS: tuple[str, ...] = typing.get_args(
    {field.name: field.type for field in msgspec.structs.fields(AgentConfig)}["driver"]
)


async def _call_api(handler: Verb, args: argparse.Namespace) -> Outcome:
    timeout_s = args.timeout_s or REQUEST_TIMEOUT_S
    conn = contexts.connection(args)
    nc = await connect(
        conn.nats,
        timeout_s=min(timeout_s, 5.0),
        creds=conn.creds,
        nkey_seed=conn.nkey_seed,
        tls_ca=conn.tls_ca,
    )
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

    where = "(default: ${}, else the context's{})"
    parent.add_argument(
        "--nats",
        metavar="URL",
        default=default(None),
        help="NATS server " + where.format("STRATUS_NATS", f", else {DEFAULT_NATS_URL}"),
    )
    parent.add_argument(
        "--creds",
        metavar="FILE",
        default=default(None),
        help="NATS credentials file " + where.format("STRATUS_NATS_CREDS", ""),
    )
    parent.add_argument(
        "--nkey-seed",
        metavar="FILE",
        default=default(None),
        help="NATS nkey seed file " + where.format("STRATUS_NATS_NKEY_SEED", ""),
    )
    parent.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=default(None),
        help="CA of the NATS server's TLS certificate " + where.format("STRATUS_NATS_TLS_CA", ""),
    )
    parent.add_argument(
        "--context",
        metavar="NAME",
        default=default(None),
        help="connect as context NAME says (default: $STRATUS_CONTEXT, else the current one; "
        "see `stratus context`)",
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


WAIT_UNTIL = {
    "stop": "until the VM is stopped",
    "start": "until the VM is running",
    "delete": "until the VM is deleted",
}
INSTANT = "(done when answered: the disk is made at the VM's next start)"


def _add_wait(parser: argparse.ArgumentParser, until: str) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help=f"wait {until}; progress on a terminal, then one outcome line, exit 1 "
        "if it ends failed",
    )


def _add_vm_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = [_common_options(defaults=False)]
    vm = commands.add_parser(
        "vm", help="create, list, show, stop, start, delete, migrate, capture VMs; logs, console"
    )
    verb_parsers = vm.add_subparsers(dest="verb", required=True, metavar="VERB")

    create = verb_parsers.add_parser("create", parents=common, help="create a VM")
    create.add_argument("name", metavar="NAME", type=argtypes.vm_name)
    create.add_argument("--size", required=True, help="size name, see `stratus sizes`")
    create.add_argument("--image", default="tiny", help="image (default: tiny)")
    create.add_argument("--region", help="region the VM must run in")
    create.add_argument("--availability-set", metavar="SET", help="spread across fault domains")
    create.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    _add_wait(create, "until the VM is running")
    create.add_argument(
        "--data-disk",
        action="append",
        type=argtypes.disk_size_mib,
        metavar="SIZE",
        help="add an empty data disk, like 1G or 512M (repeatable)",
    )
    create.add_argument("--storage", type=argtypes.storage_kind, metavar="KIND", help=STORAGE)
    netcmds.add_nic_options(create)
    create.set_defaults(handler=verbs.vm_create)

    listing = verb_parsers.add_parser("list", parents=common, help="list VMs")
    listing.add_argument("--state", choices=[str(state) for state in m.VmState])
    listing.add_argument("--host", metavar="HOST")
    listing.add_argument("--region")
    argtypes.add_page_options(listing, "VMs").set_defaults(handler=verbs.vm_list)

    verb_help = {
        "show": (verbs.vm_show, "show one VM"),
        "stop": (verbs.vm_stop, "stop (deallocate) a VM"),
        "start": (verbs.vm_start, "start a stopped VM"),
        "delete": (verbs.vm_delete, "delete a VM"),
    }
    for verb, (handler, text) in verb_help.items():
        sub = verb_parsers.add_parser(verb, parents=common, help=text)
        sub.add_argument("name", metavar="NAME", type=argtypes.vm_name)
        if verb != "show":
            sub.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
            _add_wait(sub, WAIT_UNTIL[verb])
        sub.set_defaults(handler=handler)
    _add_migrate_commands(verb_parsers, common)

    capture = verb_parsers.add_parser(
        "capture", parents=common, help="stop a VM, save it as an image"
    )
    capture.add_argument("name", metavar="NAME", type=argtypes.vm_name)
    capture.add_argument("--image", required=True, help="name of the new gallery image")
    capture.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    _add_wait(capture, "until the image is available")
    capture.set_defaults(handler=verbs.vm_capture)
    _add_console_commands(verb_parsers, common)
    netcmds.add_endpoint_commands(verb_parsers, common)


def _add_migrate_commands(
    verb_parsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    migrate = verb_parsers.add_parser("migrate", parents=common, help="move a VM, live")
    cancel = verb_parsers.add_parser("migrate-cancel", parents=common, help="end a migration")
    for sub in (migrate, cancel):
        sub.add_argument("name", metavar="NAME", type=argtypes.vm_name)
        sub.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    migrate.add_argument("--to", metavar="HOST", help="destination (default: the scheduler's)")
    _add_wait(migrate, "until the VM runs on its new host")
    migrate.set_defaults(handler=verbs.vm_migrate)
    cancel.set_defaults(handler=verbs.vm_migrate_cancel)


def _add_console_commands(
    verb_parsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: list[argparse.ArgumentParser],
) -> None:
    logs = verb_parsers.add_parser("logs", parents=common, help="print a VM's console output")
    logs.add_argument("name", metavar="NAME", type=argtypes.vm_name)
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--follow", "-f", action="store_true", help="then follow new output")
    logs.set_defaults(handler=console.vm_logs)
    attach = verb_parsers.add_parser(
        "console",
        parents=common,
        help="attach to a VM's serial console (Ctrl-] detaches)",
        description=console.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    attach.add_argument("name", metavar="NAME", type=argtypes.vm_name)
    attach.add_argument("--no-input", action="store_true", help="follow only, type nothing")
    attach.set_defaults(handler=console.vm_console)


def _add_storage_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = [_common_options(defaults=False)]
    disk = commands.add_parser("disk", help="list disks; attach and detach data disks")
    disk_verbs = disk.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = disk_verbs.add_parser("list", parents=common, help="list the disks of VMs")
    listing.add_argument(
        "vm", metavar="VM", nargs="?", type=argtypes.vm_name, help="default: every VM"
    )
    listing.set_defaults(handler=verbs.disk_list)
    attach = disk_verbs.add_parser("attach", parents=common, help="add an empty data disk")
    attach.add_argument("vm", metavar="VM", type=argtypes.vm_name)
    size = attach.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--size",
        dest="size_mib",
        type=argtypes.disk_size_mib,
        metavar="SIZE",
        help="like 1G or 512M",
    )
    size.add_argument(  # the old spelling, kept working but no longer shown
        "--size-mib", dest="size_mib", type=argtypes.disk_size_mib, help=argparse.SUPPRESS
    )
    attach.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    _add_wait(attach, INSTANT)
    attach.set_defaults(handler=verbs.disk_attach)
    detach = disk_verbs.add_parser("detach", parents=common, help="remove a data disk")
    detach.add_argument("vm", metavar="VM", type=argtypes.vm_name)
    detach.add_argument("disk_id", metavar="DISK")
    detach.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    _add_wait(detach, INSTANT)
    detach.set_defaults(handler=verbs.disk_detach)

    image = commands.add_parser("image", help="list, upload and delete gallery images")
    image_verbs = image.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = image_verbs.add_parser("list", parents=common, help="list images")
    listing.set_defaults(handler=verbs.image_list)
    upload = image_verbs.add_parser("upload", parents=common, help="upload a qcow2 or raw disk")
    upload.add_argument("file", metavar="FILE", type=argtypes.existing_file)
    upload.add_argument("--name", required=True, help="image name, [a-z0-9._-]")
    upload.add_argument("--os", default="linux", help="default: linux")
    upload.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    _add_wait(upload, "(done when answered: the bytes are checked by then)")
    upload.set_defaults(handler=verbs.image_upload)
    delete = image_verbs.add_parser("delete", parents=common, help="delete an image")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
    delete.set_defaults(handler=verbs.image_delete)


def _add_host_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = [_common_options(defaults=False)]
    hosts = commands.add_parser("host", help="list, cordon, uncordon and drain hosts")
    verb_parsers = hosts.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verb_parsers.add_parser("list", parents=common, help="list hosts")
    argtypes.add_page_options(listing, "hosts").set_defaults(handler=verbs.host_list)
    verb_help = {
        "cordon": (verbs.host_cordon, "place no new VMs on a host"),
        "uncordon": (verbs.host_uncordon, "let a cordoned host take VMs again"),
        "drain": (verbs.host_drain, "cordon a host and move its VMs elsewhere"),
    }
    for verb, (handler, text) in verb_help.items():
        sub = verb_parsers.add_parser(verb, parents=common, help=text)
        sub.add_argument("host_id", metavar="HOST")
        sub.add_argument("--request-id", metavar="ID", help=RETRY_HELP)
        if verb == "drain":
            _add_wait(sub, "until every VM has moved")
            cold = "move the VMs by stop and start, not live migration"
            sub.add_argument("--cold", action="store_true", help=cold)
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
        "--schedulers",
        type=int,
        choices=(1, 2),
        default=1,
        metavar="N",
        help="1 (default), or 2: a leader and a standby on their own stores; kill the leader "
        "and the standby takes over",
    )
    up.add_argument(
        "--http",
        dest="http_listen",
        nargs="?",
        const=argtypes.AUTO_HTTP,
        default=None,
        metavar="ADDR",
        help=f"also serve the portal and HTTP API (default {DEFAULT_HTTP_LISTEN}, or the next "
        "free port), with a "
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


class UsageError(SystemExit):
    """A command line argparse rejects; ``main`` reports it as text or JSON, exit status 2."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(2)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    """Raises ``UsageError`` instead of printing, so that ``-o json`` gets JSON errors too."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(self, message)


def wants_json(argv: list[str]) -> bool:
    """``-o json`` anywhere on the command line (before parsing, for usage errors)."""
    pairs = zip(argv, [*argv[1:], ""], strict=False)
    return any(
        (flag in ("-o", "--output") and value == "json") or flag in ("-ojson", "--output=json")
        for flag, value in pairs
    )


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(
        prog="stratus",
        description="Stratus: an event-driven VM cluster scheduler over NATS.",
        parents=[_common_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_vm_commands(commands)
    _add_host_commands(commands)
    _add_storage_commands(commands)
    netcmds.add_vnet_commands(commands, [_common_options(defaults=False)])
    common = [_common_options(defaults=False)]
    commands.add_parser("sizes", parents=common, help="list VM sizes").set_defaults(
        handler=verbs.sizes
    )
    usage = commands.add_parser(
        "usage", parents=common, help="billed hours and cost", conflict_handler="resolve"
    )
    formats = usage_output.FORMATS
    usage.add_argument("--output", "-o", choices=formats, default=argparse.SUPPRESS)
    usage.add_argument("--since", type=argtypes.aware_time, metavar="TIME", help="ISO 8601 time")
    usage.add_argument("--until", type=argtypes.aware_time, metavar="TIME", help="default: now")
    usage.set_defaults(handler=verbs.usage)
    _add_local_commands(commands)
    simulate.add_parser(commands)
    natsconfig.add_parser(commands)
    completion.add_parser(commands)
    contexts.add_parser(commands)
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
        from cli.up import run_up

        return run_up(args)
    if args.command == "demo":
        from cli.demo import run_demo

        return run_demo(args)
    if args.command == "simulate":
        return simulate.run_simulate(args)
    if args.command == "nats-config":
        return natsconfig.run(args)
    if args.command == "completion":
        print(completion.script(build_parser(), args.shell).rstrip("\n"))
        return 0
    if args.command == "context":
        outcome = Outcome(*contexts.run(args))
    else:
        handler: Verb = args.handler
        outcome = asyncio.run(_call_api(handler, args))
    if outcome.text:
        print(outcome.text)
    if outcome.note:
        print(outcome.note, file=sys.stderr)
    return 0


def _report(code: str, detail: str, as_json: bool, err: TextIO) -> None:
    text = output.error_json(code, detail) if as_json else output.error_line(code, detail)
    print(text, file=err)


def _parse(argv: list[str], err: TextIO) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in PASSTHROUGH:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as exc:
        if wants_json(argv):
            _report("usage", exc.message, True, err)
        else:
            exc.parser.print_usage(err)
            print(f"{exc.parser.prog}: error: {exc.message}", file=err)
        raise
    return args, extra


def main(argv: list[str] | None = None, *, stderr: TextIO | None = None) -> int:
    err = stderr or sys.stderr
    argv = sys.argv[1:] if argv is None else argv
    args, extra = _parse(argv, err)
    if args.command in PASSTHROUGH:
        return _delegate(args.command, extra)
    as_json = getattr(args, "output", None) == "json"
    try:
        return _run(args)
    except ApiError as exc:
        _report(exc.code, exc.detail, as_json, err)
    except StratusError as exc:  # a local problem (a config file): no API error code
        detail = " ".join(str(exc).split())
        print(output.error_json("error", detail) if as_json else f"error: {detail}", file=err)
    except KeyboardInterrupt:
        _report("interrupted", "", as_json, err)
        return 130
    return 1
