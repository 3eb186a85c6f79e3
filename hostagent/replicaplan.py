"""What a host's replica server must do to hold exactly the replicas ``ConfigureReplicas`` names.
Pure: the shell (:mod:`hostagent.replicas`, :mod:`hostagent.replicasim`) says what it holds,
:func:`plan_replicas` says what to make, fill, export and delete, and :func:`replica_statuses`
what the heartbeat reports of the replicas not ready yet.

A replica is *made* when its file is complete: a data disk's empty qcow2, an OS disk's qcow2
over its cached image, or a full copy of ``fill_from`` (copied into a partial file that takes
its name only when complete). A made replica is *ready* once it is exported.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass

from common.replica_messages import ReplicaSpec, ReplicaState, ReplicaStatus

DISK_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
"""As hostagent/disks.py: a disk id is also a file name."""
NODE_PREFIX = "r"
"""Block node names (at most 31 characters in QEMU) are derived from the disk id (up to 128)."""


def node_name(disk_id: str) -> str:
    """The replica server's block node of ``disk_id`` (its export id is the same)."""
    return NODE_PREFIX + hashlib.blake2b(disk_id.encode(), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Held:
    """One replica as the server holds it now."""

    made: bool = False
    """Its file is complete."""
    exported: bool = False
    filling: float | None = None
    """A copy (``fill_from``) or a creation under way, with its progress (0..1)."""
    failed: str = ""
    """Why the last attempt to make it failed ("" if none did)."""
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    delete: tuple[str, ...] = ()
    """Disk ids held but not named: unexport, close, remove the file (a fill is cancelled)."""
    make: tuple[ReplicaSpec, ...] = ()
    """Named, not made and not being made: create (``fill_from`` None) or copy it."""
    export: tuple[str, ...] = ()
    """Made but not exported (those of ``make`` are exported once made)."""

    @property
    def empty(self) -> bool:
        return not (self.delete or self.make or self.export)


def plan_replicas(
    desired: Sequence[ReplicaSpec],
    held: Mapping[str, Held],
    existing: AbstractSet[str] = frozenset(),
) -> ReplicaPlan:
    """The steps from ``held`` to ``desired``. A failed replica is tried again (each apply is
    the whole desired state); one being made is left to finish; one that was made before
    (``existing``) and is not held is lost, never made again."""
    named = {spec.disk_id for spec in desired}
    delete = tuple(sorted(disk_id for disk_id in held if disk_id not in named))
    make: list[ReplicaSpec] = []
    export: list[str] = []
    for spec in desired:
        have = held.get(spec.disk_id, Held())
        if have.made:
            if not have.exported:
                export.append(spec.disk_id)
        elif have.filling is None and spec.disk_id not in existing:
            make.append(spec)
    return ReplicaPlan(delete, tuple(make), tuple(export))


def replica_statuses(
    desired: Iterable[ReplicaSpec],
    held: Mapping[str, Held],
    existing: AbstractSet[str] = frozenset(),
) -> list[ReplicaStatus]:
    """The named replicas that are not ready, in the order named."""
    statuses = []
    for spec in desired:
        have = held.get(spec.disk_id, Held())
        if have.made and have.exported:
            continue
        if spec.disk_id in existing and not have.made and have.filling is None:
            statuses.append(lost(spec.disk_id))
        else:
            statuses.append(_status(spec, have))
    return statuses


def lost(disk_id: str) -> ReplicaStatus:
    return ReplicaStatus(
        disk_id=disk_id,
        state=ReplicaState.LOST,
        reason="made before, not held here any more",
        retryable=False,
    )


def _status(spec: ReplicaSpec, have: Held) -> ReplicaStatus:
    if have.failed and have.filling is None and not have.made:
        return ReplicaStatus(
            disk_id=spec.disk_id,
            state=ReplicaState.FAILED,
            reason=have.failed,
            retryable=have.retryable,
        )
    if spec.fill_from is not None and not have.made:
        progress = min(max(have.filling or 0.0, 0.0), 1.0)
        return ReplicaStatus(disk_id=spec.disk_id, state=ReplicaState.FILLING, progress=progress)
    return ReplicaStatus(disk_id=spec.disk_id, state=ReplicaState.CREATING)


def check_disk_ids(desired: Sequence[ReplicaSpec]) -> str:
    """Why ``desired`` cannot be applied ("" if it can): a disk id that is no file name, or one
    named twice."""
    seen: set[str] = set()
    for spec in desired:
        if not DISK_ID_RE.fullmatch(spec.disk_id):
            return f"invalid disk id {spec.disk_id!r}"
        if spec.disk_id in seen:
            return f"disk {spec.disk_id} is named twice"
        seen.add(spec.disk_id)
    return ""
