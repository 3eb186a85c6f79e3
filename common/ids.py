"""Identifiers. VM names and host ids end up inside NATS subjects, so both are validated here."""

from __future__ import annotations

import re
from typing import NewType

from common.errors import ProtocolError

VmName = NewType("VmName", str)
HostId = NewType("HostId", str)


def whole(body: str) -> str:
    """A pattern that ``body`` must match as a whole value. msgspec patterns use ``re.search``
    and ``$`` also matches before a final newline, so ``^web$`` accepts ``"web\\n"``; the
    ``(?!\\n)`` after ``$`` closes that gap and keeps the pattern valid JSON Schema (ECMA)."""
    return rf"^(?:{body})$(?!\n)"


VM_NAME_PATTERN = whole(r"[a-z0-9-]{1,63}")
HOST_ID_PATTERN = whole(r"[A-Za-z0-9_-]{1,63}")
IMAGE_NAME_PATTERN = whole(r"[a-z0-9][a-z0-9._-]{0,62}")
SHA256_PATTERN = whole(r"[0-9a-f]{64}")
VM_NAME_RULE = "1 to 63 lowercase letters, digits and '-'"
_VM_NAME_RE = re.compile(VM_NAME_PATTERN)
_HOST_ID_RE = re.compile(HOST_ID_PATTERN)


def vm_name_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a VM name, in words; None if it is a good name."""
    if _VM_NAME_RE.fullmatch(value):
        return None
    return f"{value!r} is not a valid vm name: use {VM_NAME_RULE} (like web-1)"


def vm_name(value: str) -> VmName:
    problem = vm_name_problem(value)
    if problem is not None:
        raise ProtocolError(problem)
    return VmName(value)


def host_id(value: str) -> HostId:
    """A host id: letters, digits, '_' and '-' only (never '.', '*', '>' or whitespace)."""
    if not _HOST_ID_RE.fullmatch(value):
        raise ProtocolError(f"host id {value!r} does not match {HOST_ID_PATTERN}")
    return HostId(value)
