"""The seam between the host agent and the replicas of replicated disks this host serves.

The scheduler sends each host the whole desired set of replicas it must hold
(``ConfigureReplicas``, common/replica_messages.py). A backend makes the host match it:

- the replica server (:mod:`hostagent.replicaserver`): one ``qemu-storage-daemon`` per host,
  each replica a qcow2 file exported over NBD under its disk id;
- the simulated backend (:mod:`hostagent.replicasim`, with the fake driver): the same accounts
  (sizes, creation and fill times) without a file or a process.

Contract, for every implementation:

- :meth:`apply` is idempotent and converges: it makes (or starts making) what is missing, and
  removes what the set no longer names, including what an earlier run of the agent left. It
  raises :class:`ReplicaError` when it cannot; :attr:`applied_digest` is then unchanged.
- :meth:`update` applies an ``UpdateReplicas`` to the set last applied, as :meth:`apply` would
  the set it leads to; it raises :class:`ReplicaError` (and changes nothing) when that set is
  not the update's ``base``, or the update does not fit it (:meth:`ReplicaSet.problem`).
- Making a replica may take long (an image to fetch, a copy to fill): :meth:`apply` returns
  once it is under way, and :meth:`statuses` tells how far each replica that is not ready is.
- :meth:`close` releases what the backend holds in this process; exports stay, so the VMs
  using them never notice an agent restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from common.errors import ConfigError, StratusError
from common.replica_messages import ConfigureReplicas, ReplicaStatus, UpdateReplicas
from common.replicaset import ReplicaSet
from common.sizes import parse_size_mib


class ReplicaError(StratusError):
    """A host could not apply its replicas (its replica server failed)."""


class ReplicaBackend(Protocol):
    name: str
    """``qemu-storage-daemon`` or ``simulated``."""

    @property
    def port(self) -> int:
        """Where the replicas are served (on the host's underlay address); 0: nowhere."""
        ...

    @property
    def applied_digest(self) -> str: ...

    async def apply(self, config: ConfigureReplicas) -> None:
        """Hold and serve exactly the replicas ``config`` names."""
        ...

    async def update(self, update: UpdateReplicas) -> None:
        """Apply ``update`` to the set last applied."""
        ...

    def statuses(self) -> list[ReplicaStatus]:
        """The named replicas that are not ready (creating, filling, failed)."""
        ...

    async def close(self) -> None: ...


def disk_capacity_mib(declared: str, data_dir: Path) -> int:
    """Space for disks and replicas: ``declared`` (``500g``), else the size of the file system
    holding ``data_dir``. ``ConfigError`` for a declaration that is no size."""
    if declared:
        try:
            return parse_size_mib(declared)
        except ValueError as exc:
            raise ConfigError(f"disk_capacity: {exc}") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    stat = os.statvfs(data_dir)
    return stat.f_blocks * stat.f_frsize >> 20


def merged(last: ReplicaSet, update: UpdateReplicas) -> ReplicaSet:
    """The set ``update`` leads to from ``last`` (which is left as it is); ``ReplicaError``
    when it does not apply to it."""
    following = last.copy()
    if why := following.apply_checked(update):
        raise ReplicaError(f"replica update not applied: {why}")
    return following
