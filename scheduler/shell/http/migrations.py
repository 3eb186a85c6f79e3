"""The /v1 routes of live migration: migrate a VM, cancel its migration.

Mutations go to the scheduler's own NATS API (``stratus.api.vm.migrate``,
``stratus.api.vm.migrate_cancel``) on its connection, as the disk and network routes do, so
both faces give the same answers. A migration under way shows in the VM
(``GET /v1/vms/{name}``: ``migration``) and on the event stream.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from common import messages as m, subjects
from common.fields import HostIdField
from common.migration_messages import MigrateVm
from scheduler.shell.http.registry import Endpoint, Registry
from scheduler.shell.http.routes import IDEMPOTENCY_HEADER, body_of, vm_ref
from scheduler.shell.http.storage import forward


class MigrationTarget(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/vms/{name}/migrate`` (``MigrateVm`` without the VM)."""

    to: HostIdField | None = None
    """The destination host; absent or null: the scheduler chooses (as for a placement)."""


async def migrate_vm(request: web.Request) -> web.StreamResponse:
    ref = vm_ref(request)
    target = await body_of(request, MigrationTarget)
    body = MigrateVm(name=ref.name, to=target.to, request_id=ref.request_id)
    return await forward(request, subjects.VM_MIGRATE, body)


async def cancel_migration(request: web.Request) -> web.StreamResponse:
    return await forward(request, subjects.VM_MIGRATE_CANCEL, vm_ref(request))


_VM_PATH = (("name", m.VmRef, "name"),)
_E = m.ErrorCode


def register(api: Registry) -> None:
    """The /v1 routes for live migration."""
    vm = "vms"
    for endpoint in (
        Endpoint("POST", "/v1/vms/{name}/migrate", migrate_vm, "migrateVm", "Move a running "
                 "VM to another host, live: it keeps running, its disks and its addresses; "
                 "`migration` in the reply (and in `GET /v1/vms/{name}`) shows the move under "
                 "way", tag=vm, mutating=True, path_params=_VM_PATH, body=MigrationTarget,
                 response=m.VmReply, headers=IDEMPOTENCY_HEADER, subject=subjects.VM_MIGRATE,
                 errors=(_E.NOT_FOUND, _E.NOT_MIGRATABLE, _E.INVALID_TARGET, _E.BUSY,
                         _E.INSUFFICIENT_CAPACITY, _E.CONFLICT)),
        Endpoint("POST", "/v1/vms/{name}/migrate/cancel", cancel_migration, "cancelMigration",
                 "End a VM's live migration without moving it (too late once it is switching "
                 "over): it runs on where it was", tag=vm, mutating=True, path_params=_VM_PATH,
                 response=m.VmReply, headers=IDEMPOTENCY_HEADER,
                 subject=subjects.VM_MIGRATE_CANCEL,
                 errors=(_E.NOT_FOUND, _E.INVALID_STATE, _E.CONFLICT)),
    ):  # fmt: skip
        api.add(endpoint)
