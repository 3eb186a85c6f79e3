"""Argument types of the ``stratus`` command line: each parses one value or says, in words,
what is wrong with it (argparse prints that as a usage error)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from common.ids import vm_name_problem
from common.paging import MAX_PAGE_LIMIT
from common.sizes import parse_size_mib
from common.spec_messages import DiskStorage


def disk_size_mib(text: str) -> int:
    """``1G`` -> 1024, ``512M`` (or ``512``) -> 512: a disk size in MiB (common/sizes.py)."""
    try:
        return parse_size_mib(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def vm_name(text: str) -> str:
    problem = vm_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def vnet_name(text: str) -> str:
    """A network name follows the rule of VM names."""
    if vm_name_problem(text) is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid network name: use 1 to 63 lowercase letters, digits and '-'"
        )
    return text


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def aware_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is local time."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return value if value.tzinfo else value.astimezone()


def port_pair(text: str) -> tuple[int | None, int]:
    """``8022:22`` -> (8022, 22): a public port and a VM port; ``22`` -> (None, 22)."""
    parts = text.split(":")
    try:
        ports = [int(part) for part in parts] if len(parts) <= 2 else []
    except ValueError:
        ports = []
    if not ports or not all(1 <= port <= 65535 for port in ports):
        raise argparse.ArgumentTypeError(f"{text!r} is not PORT or PUBLIC:PORT (1-65535)")
    return (ports[0], ports[1]) if len(ports) == 2 else (None, ports[0])


def cidr(text: str) -> str:
    """An address range like ``203.0.113.0/24``; a bare address means just it (``/32``)."""
    return text if "/" in text else f"{text}/32"


AUTO_HTTP = "auto"
"""``stratus up --http`` without an address: 127.0.0.1 from port 8080, or the first free run."""


def storage_kind(text: str) -> DiskStorage:
    """``replicated`` or ``host-local`` (``host_local`` too)."""
    try:
        return DiskStorage(text.replace("-", "_"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a storage kind: replicated or host-local"
        ) from None


def page_limit(text: str) -> int:
    """A page size: 1 to the largest a list request may ask for (common/paging.py)."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number from 1 to {MAX_PAGE_LIMIT}"
        )
    return int(text)


def add_page_options(parser: argparse.ArgumentParser, what: str) -> argparse.ArgumentParser:
    """``--limit`` and ``--marker`` of a list command (``what``: "VMs", "hosts")."""
    parser.add_argument(
        "--limit",
        type=page_limit,
        metavar="N",
        help=f"list one page of at most N {what} (default: every page)",
    )
    parser.add_argument(
        "--marker", metavar="NAME", help=f"list the {what} after NAME (the next page's marker)"
    )
    return parser
