"""What each API command of ``stratus`` does: call the API, follow ``--wait``, and say how it
went. A verb returns an ``Outcome``: what goes on stdout (a table or JSON) and an outcome line
for stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cli import output, usage as usage_output
from cli.client import StratusClient
from cli.drain import wait_drained
from cli.migrate import wait_migrated
from cli.waiting import Progress, wait_image, wait_vm
from common import list_messages as lm, messages as m
from common.errors import ApiError
from common.image_messages import ImageInfo
from common.sizes import find_size
from common.usage_messages import UsageQuery

WAIT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Outcome:
    text: str
    """For stdout: the resource as a table or JSON."""
    note: str = ""
    """For stderr: how the operation ended (or what happens next), one line."""


Verb = Callable[[StratusClient, argparse.Namespace], Awaitable[Outcome]]


def _json(args: argparse.Namespace) -> bool:
    return bool(args.output == "json")


def _vm(vm: m.VmInfo, args: argparse.Namespace, note: str = "") -> Outcome:
    return Outcome(output.to_json(vm) if _json(args) else output.vm_table([vm]), note)


def _wait_s(args: argparse.Namespace) -> float:
    return float(args.timeout_s or WAIT_TIMEOUT_S)


def _progress() -> Progress:
    return Progress(sys.stderr)


def vm_note(vm: m.VmInfo) -> str:
    """``web-1 is running on h1``: the outcome line of a wait that ended well."""
    where = f" on {vm.host}" if vm.host and vm.state is m.VmState.RUNNING else ""
    return f"{vm.name} is {vm.state}{where}"


async def _follow(
    client: StratusClient, args: argparse.Namespace, vm: m.VmInfo, goal: m.VmState
) -> Outcome:
    if not args.wait:
        return _vm(vm, args)
    final = await wait_vm(client, vm.name, goal, _wait_s(args), _progress())
    if final is None:  # deleted and forgotten
        return Outcome(output.to_json(vm) if _json(args) else "", f"{vm.name} is deleted")
    return _vm(final, args, vm_note(final))


async def _canonical_size(client: StratusClient, name: str) -> str:
    """The size's own spelling (``small`` -> ``Small``); unknown names are left to the
    scheduler, which answers with the sizes it knows."""
    sizes = {size.name: size for size in await client.list_sizes()}
    size = find_size(sizes, name)
    return size.name if size is not None else name


async def _exists(client: StratusClient, name: str) -> bool:
    try:
        return (await client.get_vm(name)).state is not m.VmState.DELETED
    except ApiError as exc:
        if exc.code == m.ErrorCode.NOT_FOUND:
            return False
        raise


async def vm_create(client: StratusClient, args: argparse.Namespace) -> Outcome:
    request = m.CreateVm(
        name=args.name,
        size=await _canonical_size(client, args.size),
        image=args.image,
        region=args.region,
        availability_set=args.availability_set,
        request_id=args.request_id,
        data_disks_mib=args.data_disk or [],
        nics=args.nics or [],
        storage=args.storage,
    )
    existed = await _exists(client, args.name)
    vm = await client.create_vm(request)
    outcome = await _follow(client, args, vm, m.VmState.RUNNING)
    if existed:  # the scheduler returns the VM as it is: say that nothing was created
        return Outcome(outcome.text, f"{args.name} already exists (same spec)")
    return outcome


def _next_page(what: str, marker: str | None) -> str:
    return f"more {what} follow: --marker {marker}" if marker is not None else ""


async def vm_list(client: StratusClient, args: argparse.Namespace) -> Outcome:
    """Every VM (page by page), or with ``--limit`` one page and where the next starts."""
    query = lm.ListVms(
        state=args.state, host=args.host, region=args.region, limit=args.limit, marker=args.marker
    )
    if args.limit is None:
        vms, note = await client.list_vms(query), ""
    else:
        page = await client.list_vms_page(query)
        vms, note = page.vms, _next_page("VMs", page.next)
    return Outcome(output.to_json(vms) if _json(args) else output.vm_table(vms), note)


async def vm_show(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.get_vm(args.name)
    return Outcome(output.to_json(vm) if _json(args) else output.vm_details(vm))


async def vm_stop(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.stop_vm(args.name, args.request_id)
    return await _follow(client, args, vm, m.VmState.STOPPED)


async def vm_start(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.start_vm(args.name, args.request_id)
    return await _follow(client, args, vm, m.VmState.RUNNING)


async def vm_delete(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.delete_vm(args.name, args.request_id)
    return await _follow(client, args, vm, m.VmState.DELETED)


async def vm_capture(client: StratusClient, args: argparse.Namespace) -> Outcome:
    request = m.CaptureVm(name=args.name, image=args.image, request_id=args.request_id)
    vm = await client.capture_vm(request)
    if not args.wait:
        note = f"capturing {args.name} into image {args.image}: see `stratus image list`"
        return _vm(vm, args, note)
    image = await wait_image(client, args.image, _wait_s(args), _progress())
    text = output.to_json(image) if _json(args) else output.image_table([image])
    return Outcome(text, f"image {image.name} is available (captured from {args.name})")


def _disk_outcome(vm: m.VmInfo, args: argparse.Namespace, note: str) -> Outcome:
    return Outcome(output.to_json(vm) if _json(args) else output.vm_details(vm), note)


async def disk_attach(client: StratusClient, args: argparse.Namespace) -> Outcome:
    """Done when answered (the disk is made at the VM's next start): ``--wait`` is accepted
    so that scripts can pass it to every verb, and changes nothing."""
    request = m.AttachDisk(vm=args.vm, size_mib=args.size_mib, request_id=args.request_id)
    vm = await client.attach_disk(request)
    disk = vm.disks[-1] if vm.disks else None
    note = f"{vm.name} has data disk {disk.disk_id}" if disk is not None else ""
    return _disk_outcome(vm, args, note)


async def disk_detach(client: StratusClient, args: argparse.Namespace) -> Outcome:
    request = m.DetachDisk(vm=args.vm, disk_id=args.disk_id, request_id=args.request_id)
    vm = await client.detach_disk(request)
    return _disk_outcome(vm, args, f"{args.disk_id} detached from {vm.name}")


async def disk_list(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vms = [await client.get_vm(args.vm)] if args.vm else await client.list_vms()
    return Outcome(output.disks_json(vms) if _json(args) else output.disk_table(vms))


async def host_list(client: StratusClient, args: argparse.Namespace) -> Outcome:
    query = lm.ListHosts(limit=args.limit, marker=args.marker)
    if args.limit is None:
        hosts, note = await client.list_hosts(query), ""
    else:
        page = await client.list_hosts_page(query)
        hosts, note = page.hosts, _next_page("hosts", page.next)
    return Outcome(output.to_json(hosts) if _json(args) else output.host_table(hosts), note)


def _host(host: m.HostInfo, args: argparse.Namespace, note: str = "") -> Outcome:
    return Outcome(output.to_json(host) if _json(args) else output.host_table([host]), note)


async def host_cordon(client: StratusClient, args: argparse.Namespace) -> Outcome:
    return _host(await client.cordon_host(args.host_id, args.request_id), args)


async def host_uncordon(client: StratusClient, args: argparse.Namespace) -> Outcome:
    return _host(await client.uncordon_host(args.host_id, args.request_id), args)


async def host_drain(client: StratusClient, args: argparse.Namespace) -> Outcome:
    host = await client.drain_host(args.host_id, args.request_id, cold=args.cold)
    if not args.wait:
        return _host(host, args)
    host = await wait_drained(client, host, _wait_s(args), _progress())
    return _host(host, args, f"host {host.host_id} is drained")


async def vm_migrate(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.migrate_vm(args.name, args.to, args.request_id)
    target = vm.migration.target if vm.migration is not None else "?"
    if not args.wait:
        return _vm(vm, args, f"{vm.name} is migrating to {target}")
    final = await wait_migrated(client, vm, _wait_s(args), _progress())
    return _vm(final, args, f"{final.name} is running on {final.host} (moved live)")


async def vm_migrate_cancel(client: StratusClient, args: argparse.Namespace) -> Outcome:
    vm = await client.cancel_migration(args.name, args.request_id)
    return _vm(vm, args, f"{vm.name}: migration cancelled, it runs on {vm.host}")


def _image(image: ImageInfo, args: argparse.Namespace, note: str = "") -> Outcome:
    return Outcome(output.to_json(image) if _json(args) else output.image_table([image]), note)


async def image_list(client: StratusClient, args: argparse.Namespace) -> Outcome:
    images = await client.list_images()
    return Outcome(output.to_json(images) if _json(args) else output.image_table(images))


async def image_upload(client: StratusClient, args: argparse.Namespace) -> Outcome:
    """Done when answered (the scheduler checked the bytes): ``--wait`` changes nothing."""
    path: Path = args.file
    image = await client.upload_image(path, args.name, os=args.os, request_id=args.request_id)
    return _image(image, args, f"image {image.name} is {image.state}" if args.wait else "")


async def image_delete(client: StratusClient, args: argparse.Namespace) -> Outcome:
    return _image(await client.delete_image(args.name, args.request_id), args)


async def sizes(client: StratusClient, args: argparse.Namespace) -> Outcome:
    found = await client.list_sizes()
    return Outcome(output.to_json(found) if _json(args) else output.size_table(found))


async def usage(client: StratusClient, args: argparse.Namespace) -> Outcome:
    report = await client.usage(UsageQuery(since=args.since, until=args.until))
    return Outcome(usage_output.render(report, args.output))
