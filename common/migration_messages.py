"""Wire schemas of live migration: moving a running VM to another host without stopping it.

A migration of VM ``v``, running at generation ``g`` on host S, to host T, is one **attempt**
numbered by the generation ``t`` (> every generation ``v`` ever had) the VM will have on T:

1. The scheduler records the attempt (the VM's ``migration``) and reserves ``v``'s resources on
   T. It sends T ``PrepareIncoming(v, t, source=S)``; T creates ``v``'s disks empty at their
   full size, exports them over NBD on its underlay address, starts ``v`` paused, waiting for
   its state, and reports it ``incoming`` with a ``MigrationReport`` (status ``ready``, the
   address and ports).
2. The scheduler sends S ``MigrateOut(v, g, target=T, target_generation=t, address, ports)``.
   S copies the disks into T's exports (mirror; the guest keeps writing, every write goes to
   both copies once the mirror is in step), then the memory (pre-copy), and pauses ``v`` for
   the last round. S reports ``v`` ``running`` with status ``sending`` (and progress) while it
   copies, then ``handed_over`` (status ``sent``): ``v`` is paused on S and never runs there
   again; T holds the complete state, still paused.
3. Only then, on the scheduler's word: the scheduler stores ``v`` on T at generation ``t`` (the
   generation changes exactly once) and sends T ``FinishIncoming(v, t)``: T stops exporting the
   disks and lets ``v`` run. S's copy, now stale, is destroyed with ``DeleteVm(v, g)``.

A failed or cancelled attempt (``CancelMigration`` to S, ``DeleteVm(v, t)`` to T) leaves ``v``
running on S at ``g``: S reports status ``failed`` with the reason, and ``running``. Every
command is idempotent and level-triggered: the scheduler repeats it while the reports show it
is not done, so a lost command or report only delays a migration.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from common.fields import Generation, HostIdField, RequestId, ShortText, VmNameField

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class MigrationStatus(StrEnum):
    """How one side of a migration attempt stands, as its host reports it."""

    READY = "ready"
    """Destination: the VM waits paused for its state; the disks are exported."""
    SENDING = "sending"
    """Source: copying the disks, then the memory; the VM still runs here."""
    SENT = "sent"
    """Source: everything is on the destination; the VM is paused here for good."""
    FAILED = "failed"
    """Either side: the attempt is over without a switchover (``detail`` says why); a source
    VM runs on as before."""


class MigrationReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One side of a migration attempt, in a host's inventory (``ObservedVm.migration``)."""

    attempt: Generation
    """The attempt: the generation the VM gets on the destination."""
    peer: HostIdField
    """The other host: the destination (on the source) or the source (on the destination)."""
    status: MigrationStatus
    address: ShortText = ""
    """Destination: the underlay address the source sends to."""
    migration_port: Port = 0
    """Destination: where QEMU listens for the VM's state (``-incoming``)."""
    nbd_port: Port = 0
    """Destination: where the VM's disks are exported (NBD, one export per disk id)."""
    transferred_mib: Annotated[int, msgspec.Meta(ge=0)] = 0
    total_mib: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Source: progress (disks, then memory) of what there is to send."""
    detail: ShortText = ""
    """``failed``: why."""


class MigrateOut(msgspec.Struct, tag="migrate_out", kw_only=True):
    """Source: send the VM ``name`` running at ``generation`` to ``target``, which awaits it as
    attempt ``target_generation`` at ``address`` (ports as it reported them). Repeating it while
    the attempt runs, or after it ended, changes nothing and re-reports."""

    name: VmNameField
    generation: Generation
    target: HostIdField
    target_generation: Generation
    address: ShortText
    migration_port: Port
    nbd_port: Port
    max_downtime_ms: Annotated[int, msgspec.Meta(ge=1)] = 100
    """The longest the VM may be paused for the last round (QEMU ``downtime-limit``)."""
    max_bandwidth_mib_s: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Cap on the copy's rate; 0: no cap."""


class CancelMigration(msgspec.Struct, tag="cancel_migration", kw_only=True):
    """Source: end the attempt ``target_generation`` of the VM ``name`` (at ``generation``)
    without a switchover; the VM runs on here. Too late once it was ``sent``: nothing changes."""

    name: VmNameField
    generation: Generation
    target_generation: Generation


class FinishIncoming(msgspec.Struct, tag="finish_incoming", kw_only=True):
    """Destination: the VM received as ``generation`` is now the VM: stop exporting its disks
    and let it run. Refused (reported ``failed``) if its state has not fully arrived."""

    name: VmNameField
    generation: Generation


# --------------------------------------------------------------------------- API
# stratus.api.vm.migrate / stratus.api.vm.migrate_cancel (and jobs), answered by VmReply.


class MigrationCause(StrEnum):
    REQUEST = "request"
    """``stratus vm migrate``."""
    DRAIN = "drain"
    REBALANCE = "rebalance"


class MigrationPhase(StrEnum):
    PREPARING = "preparing"
    """The destination is getting ready (disks, a paused VM waiting for its state)."""
    COPYING = "copying"
    """The source is copying disks and memory; the VM runs on the source."""
    SWITCHING = "switching"
    """The state arrived; the VM now belongs to the destination, which is letting it run."""
    CANCELLING = "cancelling"
    """The attempt is being ended; the VM runs on the source."""


class MigrateVm(msgspec.Struct, kw_only=True):
    """Move a running VM to another host, live. ``to``: a host of the operator's choosing
    (checked like a placement); None: the scheduler chooses."""

    name: VmNameField
    to: HostIdField | None = None
    request_id: RequestId | None = None


class MigrationInfo(msgspec.Struct, kw_only=True):
    """A migration under way (``VmInfo.migration``)."""

    source: str
    target: str
    attempt: int
    cause: MigrationCause
    phase: MigrationPhase
    started_at: datetime
    transferred_mib: int = 0
    total_mib: int = 0
