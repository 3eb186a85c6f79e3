"""The VM state machine: which changes of state a VM record may make. Pure.

Checked in one place, ``StepContext.change_vm``: a change not in ``ALLOWED`` is a bug in the
core and raises ``IllegalTransition``. Staying in a state is always allowed (a change of reason,
host or disks). A new record (create, or create again after delete) starts ``pending`` and is
not a transition.

    pending ──► scheduled ──► starting ──► running
       ▲  │         │  ▲          │           │
       │  │         └──┼──────────┴─► stopping ──► stopped ──► pending (start)
       │  │            └── starting (vanished from its host: started again)
       │  └──► stopped / failed / deleted (before placement, or placement timed out)
       └── lost (host declared dead) ◄── scheduled / starting / running
    scheduled / starting / running / stopping ──► deleting ──► deleted
    scheduled / starting / running ──► pending (start failed: retried elsewhere) / failed
"""

from __future__ import annotations

from common.messages import VmState

S = VmState

_ON_A_HOST = (S.PENDING, S.STOPPING, S.DELETING, S.LOST, S.FAILED)
"""Where a VM that is placed (scheduled, starting or running) may go, besides onward."""

ALLOWED: frozenset[tuple[VmState, VmState]] = frozenset(
    {
        (S.PENDING, S.SCHEDULED),
        (S.PENDING, S.STOPPED),
        (S.PENDING, S.FAILED),
        (S.PENDING, S.DELETED),
        (S.SCHEDULED, S.STARTING),
        (S.SCHEDULED, S.RUNNING),
        *((S.SCHEDULED, to) for to in _ON_A_HOST),
        (S.STARTING, S.RUNNING),
        *((S.STARTING, to) for to in _ON_A_HOST),
        (S.RUNNING, S.STARTING),
        *((S.RUNNING, to) for to in _ON_A_HOST),
        (S.STOPPING, S.STOPPED),
        (S.STOPPING, S.PENDING),
        (S.STOPPING, S.DELETING),
        (S.DELETING, S.DELETED),
        (S.LOST, S.PENDING),
        (S.STOPPED, S.PENDING),
        (S.STOPPED, S.DELETED),
        (S.FAILED, S.PENDING),
        (S.FAILED, S.STOPPED),
        (S.FAILED, S.DELETED),
    }
)
"""``(from, to)`` pairs a VM record may make."""

SETTLED_STATES = frozenset({S.RUNNING, S.STOPPED, S.DELETED, S.FAILED})
"""States that end a drain's move: the VM's ``drained_from`` is cleared on entering one."""


class IllegalTransition(AssertionError):
    """The core tried a change of state the table does not allow (a bug)."""


def check(old: VmState, new: VmState) -> None:
    if old is not new and (old, new) not in ALLOWED:
        raise IllegalTransition(f"vm state {old} -> {new} is not allowed")
