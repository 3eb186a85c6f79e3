"""``stratus nats-config``: a nats-server configuration with one nkey per role and per host.

Roles and what each may do (subjects of common/subjects.py):

- ``scheduler``: everything. ``admin``: everything but writing the leader lease
  (``$KV.STRATUS_LEADER.>``), the state log (``stratus.state.log``) and the state snapshots
  (``$O.STRATUS_STATE_SNAP.>``), or updating, deleting or purging their streams: only
  schedulers write the control plane's own state.
- ``host-<id>``: publish its own heartbeats (``stratus.host.<id>.hb``) and capture reports
  (``stratus.host.<id>.captured``), receive its own commands (``stratus.host.<id>.cmd``) and its
  own reply inboxes (``_INBOX_<id>.>``), read the images object store and stage chunks in it
  (a captured disk; the scheduler checks them and writes the object's metadata). Nothing
  else: it can neither heartbeat nor report as another host, nor command any.
- ``publisher``: the API (``stratus.api.>``), the jobs stream, image uploads (chunks only, as
  agents), and reading the events stream. No host subjects, no events.
- ``dashboard``: the read-only API subjects and reading the events stream.

Consoles (``stratus.console.<host>.<vm>.out|tail|in``): ``publisher`` may follow any VM's
console output, ask for its recent output and type on it; ``dashboard`` may follow and ask,
not type. ``host-<id>`` publishes output only under its own host id and receives only its own
VMs' tail and input requests, which it may answer (``allow_responses``: one reply to each
request it received, nothing else).

A publisher's or dashboard's replies arrive only under ``_INBOX.<its public key>`` (the CLI
and the daemons connect with that prefix when given ``--nkey-seed``), an agent's under
``_INBOX_<host id>``: no client reads another's replies. Only ``scheduler`` and ``admin`` may
create JetStream consumers or purge the images store.

It writes ``nats-server.conf`` (public keys only) and one seed file per user under ``nkeys/``
(mode 0600): give each process its own with ``--nkey-seed FILE``. With ``--tls`` it also makes
a development CA (cli/devca.py, the ``cryptography`` package) and a server certificate under
``tls/``; clients then use a ``tls://`` URL and ``--tls-ca tls/ca.pem``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from cli.devca import generate_tls
from common import subjects
from common.errors import ConfigError, ProtocolError
from common.ids import host_id
from common.natsauth import host_inbox_prefix, key_inbox_prefix

OBJ_STREAM = f"OBJ_{subjects.IMAGES_BUCKET}"
# No role but scheduler and admin may create a JetStream consumer: nats-server does not check a
# push consumer's deliver subject against its creator's permissions (nats-io/nats-server#8274),
# so a consumer on the images store could deliver uploaded bytes to stratus.host.<id>.cmd. The
# events stream is read live (a subscription on stratus.events.>) and back by sequence
# ($JS.API.STREAM.MSG.GET), image objects chunk by chunk (common/imagestore.py).
EVENTS_READ = [
    "$JS.API.INFO",
    f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}",
    f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
]
IMAGES_READ = [
    "$JS.API.INFO",
    f"$JS.API.STREAM.INFO.{OBJ_STREAM}",
    f"$JS.API.STREAM.MSG.GET.{OBJ_STREAM}",
    f"$JS.API.DIRECT.GET.{OBJ_STREAM}.>",
]
IMAGES_WRITE = [f"$O.{subjects.IMAGES_BUCKET}.C.>"]
"""Stage an object's chunks; its metadata (``$O.STRATUS_IMAGES.M.*``: what names the chunks and
makes them an object, or marks it deleted) is written by the scheduler once it has checked
them (common/imagestore.py), and purging the store is the scheduler's and admins' only."""
CONTROL_PLANE_STREAMS = (
    f"KV_{subjects.LEASE_BUCKET}",
    subjects.STATE_STREAM,
    f"OBJ_{subjects.SNAPSHOT_BUCKET}",
)
CONTROL_PLANE_WRITES = (
    f"$KV.{subjects.LEASE_BUCKET}.>",
    subjects.STATE_SUBJECT,
    f"$O.{subjects.SNAPSHOT_BUCKET}.>",
    *(
        f"$JS.API.STREAM.{operation}.{stream}"
        for stream in CONTROL_PLANE_STREAMS
        for operation in ("UPDATE", "DELETE", "PURGE", "MSG.DELETE")
    ),
)
"""The leader lease, the state log and its snapshots: written by the scheduler role alone. An
admin may read them but not write: a lease key rewritten, or a record appended to the log, by
anyone but the leader would let two schedulers act at once or put a foreign batch into every
standby's store. (Other roles may not touch them at all.)"""
CONSOLE_READ = [subjects.console_tail("*", "*")]
CONSOLE_WRITE = [subjects.console_input("*", "*")]
CONSOLE_FOLLOW = subjects.console_output("*", "*")
READ_API = [
    subjects.VM_GET,
    subjects.VM_LIST,
    subjects.HOST_LIST,
    subjects.SIZES_LIST,
    subjects.IMAGE_LIST,
    subjects.USAGE_GET,
    subjects.VNET_GET,
    subjects.VNET_LIST,
]


@dataclass(frozen=True)
class Permissions:
    publish: list[str]
    subscribe: list[str]
    deny_publish: tuple[str, ...] = ()
    allow_responses: bool = False
    """May answer the requests it receives (one reply each), whatever their inbox."""


def role_permissions(role: str, public_key: str = "") -> Permissions:
    """The subjects a role may publish to and subscribe to (``host-<id>`` for an agent). A
    publisher's or dashboard's replies come only to the inboxes of its key (``public_key``);
    clients of ours connect with that prefix (common/natsauth.py ``inbox_prefix``)."""
    if role == "scheduler":
        return Permissions([">"], [">"])
    if role == "admin":
        return Permissions([">"], [">"], deny_publish=CONTROL_PLANE_WRITES)
    inbox = f"{key_inbox_prefix(public_key)}.>"
    if role == "publisher":
        publish = [subjects.API_WILDCARD, subjects.JOBS_WILDCARD, *EVENTS_READ, *IMAGES_READ]
        publish += [*IMAGES_WRITE, *CONSOLE_READ, *CONSOLE_WRITE]
        return Permissions(_unique(publish), [inbox, subjects.EVENTS_WILDCARD, CONSOLE_FOLLOW])
    if role == "dashboard":
        publish = [*READ_API, *EVENTS_READ, *CONSOLE_READ]
        return Permissions(_unique(publish), [inbox, subjects.EVENTS_WILDCARD, CONSOLE_FOLLOW])
    if role.startswith("host-"):
        host = role.removeprefix("host-")
        own = [
            subjects.host_heartbeat(host),
            subjects.host_captured(host),
            subjects.console_output(host, "*"),
        ]
        consoles = [subjects.console_tail(host, "*"), subjects.console_input(host, "*")]
        return Permissions(
            _unique([*own, *IMAGES_READ, *IMAGES_WRITE]),
            [subjects.host_commands(host), f"{host_inbox_prefix(host)}.>", *consoles],
            allow_responses=True,
        )
    raise ConfigError(f"unknown role {role!r}")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def new_user_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    key = nkeys.from_seed(bytearray(seed))
    try:
        return str(key.public_key.decode())
    finally:
        key.wipe()


def _quoted(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def render_config(users: dict[str, str], tls: tuple[Path, Path, Path] | None = None) -> str:
    """The ``authorization`` block for ``users`` (role -> public key), and a ``tls`` block when
    given (ca, cert, key)."""
    lines = ["# Generated by `stratus nats-config`: one nkey per role and per host.", ""]
    if tls is not None:
        ca_file, cert_file, key_file = tls
        lines += [
            "tls {",
            f'  cert_file: "{cert_file}"',
            f'  key_file: "{key_file}"',
            f'  ca_file: "{ca_file}"',
            "  timeout: 2",
            "}",
            "",
        ]
    lines += ["authorization {", "  users = ["]
    for role, key in users.items():
        perms = role_permissions(role, key)
        publish = f"allow: {_quoted(perms.publish)}"
        if perms.deny_publish:
            publish += f", deny: {_quoted(perms.deny_publish)}"
        lines += [
            f"    # {role}",
            f'    {{ nkey: "{key}", permissions: {{',
            f"        publish: {{ {publish} }}",
            f"        subscribe: {{ allow: {_quoted(perms.subscribe)} }}",
            *(["        allow_responses: true"] if perms.allow_responses else []),
            "    } }",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def roles_for(hosts: list[str]) -> list[str]:
    checked = []
    for host in hosts:
        try:
            checked.append(f"host-{host_id(host)}")
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
    return ["scheduler", "publisher", "dashboard", "admin", *checked]


def generate(out_dir: Path, hosts: list[str], tls_names: list[str] | None = None) -> Path:
    """Write ``nats-server.conf`` and ``nkeys/<role>.nk`` (mode 0600); return the config path.

    Existing seed files are kept (so the command can add hosts); only new roles get new keys.
    With ``tls_names`` (possibly empty), a development CA and a server certificate for
    localhost, 127.0.0.1 and those names are written under ``tls/`` and the server requires TLS.
    """
    keys_dir = out_dir / "nkeys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    users: dict[str, str] = {}
    for role in roles_for(hosts):
        path = keys_dir / f"{role}.nk"
        if path.exists():
            seed = path.read_bytes().strip()
        else:
            seed = new_user_seed()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(seed + b"\n")
        users[role] = public_key(seed)
    tls = None if tls_names is None else generate_tls(out_dir / "tls", tls_names)
    config = out_dir / "nats-server.conf"
    config.write_text(render_config(users, tls))
    return config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = commands.add_parser(
        "nats-config",
        help="write a nats-server config with nkeys and permissions per role and host",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    sub.add_argument(
        "--host", dest="hosts", action="append", default=[], metavar="ID", help="a host (repeat)"
    )
    sub.add_argument(
        "--tls", action="store_true", help="also make a development CA and a server certificate"
    )
    sub.add_argument(
        "--tls-name",
        dest="tls_names",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP the server certificate is for (repeat; localhost is always in)",
    )


def run(args: argparse.Namespace) -> int:
    config = generate(args.out, args.hosts, args.tls_names if args.tls else None)
    print(f"wrote {config} and seeds in {args.out / 'nkeys'}")
    if args.tls:
        print(f"clients: --tls-ca {args.out / 'tls' / 'ca.pem'} and a tls:// URL")
    print(f"start: nats-server -js -c {config}")
    return 0
