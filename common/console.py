"""Which host serves a VM's console (the CLI and the HTTP API ask the same question)."""

from __future__ import annotations

from typing import Final

from common import messages as m
from common.errors import ApiError

CONSOLE_STATES: Final = frozenset(
    {m.VmState.SCHEDULED, m.VmState.STARTING, m.VmState.RUNNING, m.VmState.STOPPING}
)


def console_host(vm: m.VmInfo) -> str:
    """The host whose agent serves the VM's console; ``invalid_state`` when it runs nowhere."""
    if vm.host is None or vm.state not in CONSOLE_STATES:
        detail = f"vm {vm.name} is not running on any host (state {vm.state}): it has no console"
        raise ApiError(m.ErrorCode.INVALID_STATE, detail)
    return vm.host
