"""``stratus context``: named connections (NATS URL and credentials, HTTP URL and token) in
the user's config dir, like ``nats context``; and where each connection setting comes from:
flags > environment > the chosen context > defaults.

The file is ``$XDG_CONFIG_HOME/stratus/contexts.json`` (``~/.config/stratus/`` without it;
``%APPDATA%\\stratus\\`` on Windows), written whole and atomically with mode 600: it may hold
a bearer token."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec

from cli import output
from common import messages as m
from common.errors import ApiError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
FILE_NAME = "contexts.json"


class Context(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    nats: str
    creds: str = ""
    nkey_seed: str = ""
    tls_ca: str = ""
    http: str = ""
    token: str = ""


class ContextFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    current: str = ""
    contexts: dict[str, Context] = {}


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """The settings a command connects with, each from the first place that has it."""

    nats: str
    creds: str = ""
    nkey_seed: str = ""
    tls_ca: str = ""


# setting -> environment variable
ENVIRONMENT = {
    "nats": "STRATUS_NATS",
    "creds": "STRATUS_NATS_CREDS",
    "nkey_seed": "STRATUS_NATS_NKEY_SEED",
    "tls_ca": "STRATUS_NATS_TLS_CA",
}
CONTEXT_ENV = "STRATUS_CONTEXT"


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get("XDG_CONFIG_HOME"):
        return Path(environ["XDG_CONFIG_HOME"]) / "stratus"
    if sys.platform == "win32" and environ.get("APPDATA"):
        return Path(environ["APPDATA"]) / "stratus"
    return Path.home() / ".config" / "stratus"


def load(path: Path) -> ContextFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ContextFile)
    except FileNotFoundError:
        return ContextFile()
    except (OSError, msgspec.DecodeError) as exc:
        raise ApiError("invalid_config", f"cannot read {path}: {exc}") from exc


def save(path: Path, contexts: ContextFile) -> None:
    """Replace the file in one step; readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = msgspec.json.format(msgspec.json.encode(contexts), indent=2) + b"\n"
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".contexts-")  # created with mode 600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def resolve(
    flags: Mapping[str, str | None], environ: Mapping[str, str], contexts: ContextFile
) -> Connection:
    """Each setting from the flags, else the environment, else the chosen context (``--context``,
    else ``$STRATUS_CONTEXT``, else the current one), else the default."""
    chosen = flags.get("context") or environ.get(CONTEXT_ENV) or contexts.current
    context = contexts.contexts.get(chosen) if chosen else None
    if chosen and context is None:
        raise ApiError(m.ErrorCode.NOT_FOUND, f"no context {chosen!r}: see `stratus context list`")
    values: dict[str, str] = {}
    for name, variable in ENVIRONMENT.items():
        from_context = getattr(context, name) if context is not None else ""
        values[name] = flags.get(name) or environ.get(variable) or from_context
    return Connection(
        nats=values["nats"] or DEFAULT_NATS_URL,
        creds=values["creds"],
        nkey_seed=values["nkey_seed"],
        tls_ca=values["tls_ca"],
    )


def connection(args: argparse.Namespace) -> Connection:
    flags = {name: getattr(args, name, None) for name in (*ENVIRONMENT, "context")}
    return resolve(flags, os.environ, load(config_dir() / FILE_NAME))


# --------------------------------------------------------------------------- the commands


def _absolute(text: str | None) -> str:
    return str(Path(text).expanduser().resolve()) if text else ""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    context = commands.add_parser("context", help="named connections: add, use, list, show")
    verbs = context.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add (or replace) a context")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--nats", dest="ctx_nats", required=True, metavar="URL")
    auth = add.add_mutually_exclusive_group()
    auth.add_argument("--creds", dest="ctx_creds", metavar="FILE", help="NATS credentials file")
    auth.add_argument("--nkey-seed", dest="ctx_nkey_seed", metavar="FILE", help="nkey seed file")
    add.add_argument("--tls-ca", dest="ctx_tls_ca", metavar="FILE", help="NATS server's CA")
    add.add_argument("--http", dest="ctx_http", metavar="URL", help="the HTTP API and portal")
    add.add_argument("--token", dest="ctx_token", metavar="T", help="the HTTP API's token")
    add.add_argument("--use", action="store_true", help="make it the current context")
    for verb, text in (("use", "make NAME the current context"), ("remove", "forget NAME")):
        verbs.add_parser(verb, help=text).add_argument("name", metavar="NAME")
    show = verbs.add_parser("show", help="show a context (default: the current one)")
    show.add_argument("name", metavar="NAME", nargs="?")
    listing = verbs.add_parser("list", help="list contexts; * marks the current one")
    for parser in (show, listing):
        parser.add_argument("--output", "-o", choices=("table", "json"), default=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> tuple[str, str]:
    """Carry out ``stratus context VERB``: what to print on stdout, and an outcome line for
    stderr (``ApiError`` for a name that is not there)."""
    path = config_dir() / FILE_NAME
    contexts = load(path)
    if args.verb == "list":
        return _listing(contexts, args.output == "json"), ""
    if args.verb == "show":
        return _show(contexts, args.name or contexts.current, args.output == "json"), ""
    if args.verb == "add":
        contexts.contexts[args.name] = Context(
            nats=args.ctx_nats,
            creds=_absolute(args.ctx_creds),
            nkey_seed=_absolute(args.ctx_nkey_seed),
            tls_ca=_absolute(args.ctx_tls_ca),
            http=args.ctx_http or "",
            token=args.ctx_token or "",
        )
        if args.use or not contexts.current:
            contexts.current = args.name
    elif args.name not in contexts.contexts:
        raise ApiError(m.ErrorCode.NOT_FOUND, f"no context {args.name!r}")
    elif args.verb == "use":
        contexts.current = args.name
    else:
        del contexts.contexts[args.name]
        contexts.current = "" if contexts.current == args.name else contexts.current
    save(path, contexts)
    current = "; it is the current context" if contexts.current == args.name else ""
    done = {"add": "saved", "use": "in use", "remove": "removed"}[args.verb]
    return "", f"context {args.name} {done}{current} ({path})"


def _listing(contexts: ContextFile, as_json: bool) -> str:
    if as_json:
        return output.to_json(sorted(contexts.contexts))
    rows = [
        ("*" if name == contexts.current else "", name, context.nats, context.http or "-")
        for name, context in sorted(contexts.contexts.items())
    ]
    return output.table(("CURRENT", "NAME", "NATS", "HTTP"), rows)


def _show(contexts: ContextFile, name: str, as_json: bool) -> str:
    context = contexts.contexts.get(name)
    if context is None:
        raise ApiError(m.ErrorCode.NOT_FOUND, f"no context {name!r}" if name else "no context")
    shown = msgspec.structs.replace(context, token="***" if context.token else "")
    fields = {"name": name, "current": name == contexts.current, **msgspec.to_builtins(shown)}
    if as_json:
        return output.to_json(fields)
    return "\n".join(f"{key}: {value}" for key, value in fields.items())
