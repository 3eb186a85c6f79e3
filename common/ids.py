"""Identifiers. VM names and host ids end up inside NATS subjects, so both are validated here."""

from __future__ import annotations

import re
from typing import NewType

from common.errors import ProtocolError

VmName = NewType("VmName", str)
HostId = NewType("HostId", str)

VM_NAME_PATTERN = r"^[a-z0-9-]{1,63}$"
HOST_ID_PATTERN = r"^[A-Za-z0-9_-]{1,63}$"
_VM_NAME_RE = re.compile(VM_NAME_PATTERN)
_HOST_ID_RE = re.compile(HOST_ID_PATTERN)


def vm_name(value: str) -> VmName:
    if not _VM_NAME_RE.match(value):
        raise ProtocolError(f"vm name {value!r} does not match {VM_NAME_PATTERN}")
    return VmName(value)


def host_id(value: str) -> HostId:
    """A host id: letters, digits, '_' and '-' only (never '.', '*', '>' or whitespace)."""
    if not _HOST_ID_RE.match(value):
        raise ProtocolError(f"host id {value!r} does not match {HOST_ID_PATTERN}")
    return HostId(value)
