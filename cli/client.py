"""A typed client of the Stratus publisher API over NATS (used by the CLI, tests and benches)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError, NoRespondersError, TimeoutError as NatsTimeoutError

from common import codec, list_messages as lm, messages as m, subjects
from common.console_messages import ConsoleInput, ConsoleReply, ConsoleTail
from common.errors import ApiError
from common.image_messages import (
    ImageInfo,
    ImageListReply,
    ImageRef,
    ImageReply,
    ListImages,
    UploadImage,
)
from common.imagestore import stage_image
from common.migration_messages import MigrateVm
from common.natsauth import auth_options, inbox_options, redact_url
from common.network_messages import (
    AddEndpoint,
    CreateVnet,
    ListVnets,
    RemoveEndpoint,
    VnetInfo,
    VnetListReply,
    VnetRef,
    VnetReply,
)
from common.usage_messages import UsageQuery, UsageReply, UsageReport

R = TypeVar(
    "R",
    m.VmReply,
    m.HostReply,
    lm.VmListReply,
    lm.HostListReply,
    lm.SizeListReply,
    UsageReply,
    ImageReply,
    ImageListReply,
    VnetReply,
    VnetListReply,
)

L = TypeVar("L", lm.VmListReply, lm.HostListReply, lm.SizeListReply, ImageListReply, VnetListReply)
"""A list reply: a page, and ``next`` when more remain (common/paging.py)."""
Q = TypeVar("Q", lm.ListVms, lm.ListHosts, lm.ListSizes, ListImages, ListVnets)


async def _ignore(*_args: object) -> None:
    """Connection callbacks that keep nats-py from logging tracebacks in a CLI."""


async def connect(
    url: str, *, timeout_s: float = 5.0, creds: str = "", nkey_seed: str = "", tls_ca: str = ""
) -> Client:
    """Connect once to ``url``, failing fast with ``ApiError(unavailable)``.

    nats-py retries forever when ``max_reconnect_attempts`` is 0, so allow exactly one retry.
    A refused connection (bad credentials) is closed, not left to the garbage collector.
    """
    nc = Client()
    options: dict[str, Any] = {
        "connect_timeout": timeout_s,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.05,
        "error_cb": _ignore,
        "disconnected_cb": _ignore,
        "closed_cb": _ignore,
        **auth_options(creds, nkey_seed, tls_ca),
        **inbox_options(nkey_seed),  # the only inboxes this key may read (stratus nats-config)
    }
    try:
        async with asyncio.timeout(timeout_s):
            await nc.connect(url, **options)
        return nc
    except (OSError, ValueError, NatsError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):  # closing a half-open TLS connection can hang
                await nc.close()
        where = redact_url(url)
        raise ApiError(m.ErrorCode.UNAVAILABLE, f"cannot connect to NATS at {where}") from exc


class StratusClient:
    def __init__(self, nc: Client, *, timeout_s: float = 10.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s

    async def _call(self, subject: str, body: msgspec.Struct, decoder: codec.Decoder[R]) -> R:
        try:
            msg = await self._nc.request(subject, codec.encode(body), timeout=self._timeout_s)
        except NoRespondersError as exc:
            raise ApiError(m.ErrorCode.UNAVAILABLE, "no scheduler is answering") from exc
        except NatsTimeoutError as exc:
            raise ApiError(m.ErrorCode.UNAVAILABLE, f"no answer within {self._timeout_s}s") from exc
        reply = decoder.decode(msg.data)
        if reply.error is not None:
            raise ApiError(reply.error.code, reply.error.detail)
        return reply

    async def _vm(self, subject: str, body: msgspec.Struct) -> m.VmInfo:
        reply = await self._call(subject, body, codec.vm_reply)
        assert reply.vm is not None
        return reply.vm

    async def create_vm(self, request: m.CreateVm) -> m.VmInfo:
        return await self._vm(subjects.VM_CREATE, request)

    async def get_vm(self, name: str) -> m.VmInfo:
        return await self._vm(subjects.VM_GET, m.VmRef(name=name))

    async def stop_vm(self, name: str, request_id: str | None = None) -> m.VmInfo:
        return await self._vm(subjects.VM_STOP, m.VmRef(name=name, request_id=request_id))

    async def start_vm(self, name: str, request_id: str | None = None) -> m.VmInfo:
        return await self._vm(subjects.VM_START, m.VmRef(name=name, request_id=request_id))

    async def delete_vm(self, name: str, request_id: str | None = None) -> m.VmInfo:
        return await self._vm(subjects.VM_DELETE, m.VmRef(name=name, request_id=request_id))

    async def migrate_vm(
        self, name: str, to: str | None = None, request_id: str | None = None
    ) -> m.VmInfo:
        body = MigrateVm(name=name, to=to, request_id=request_id)
        return await self._vm(subjects.VM_MIGRATE, body)

    async def cancel_migration(self, name: str, request_id: str | None = None) -> m.VmInfo:
        body = m.VmRef(name=name, request_id=request_id)
        return await self._vm(subjects.VM_MIGRATE_CANCEL, body)

    async def _pages(self, subject: str, query: Q, decoder: codec.Decoder[L]) -> list[L]:
        """Every page of a list, from ``query``'s marker on (its limit sets the page size)."""
        pages = [await self._call(subject, query, decoder)]
        while (marker := pages[-1].next) is not None and marker != query.marker:
            query = msgspec.structs.replace(query, marker=marker)
            pages.append(await self._call(subject, query, decoder))
        return pages

    async def list_vms(self, query: lm.ListVms | None = None) -> list[m.VmInfo]:
        """Every VM that passes the query's filters, asked for page by page."""
        pages = await self._pages(subjects.VM_LIST, query or lm.ListVms(), codec.vm_list_reply)
        return [vm for page in pages for vm in page.vms]

    async def list_vms_page(self, query: lm.ListVms) -> lm.VmListReply:
        """One page: at most ``query.limit`` VMs after ``query.marker``, and ``next``."""
        return await self._call(subjects.VM_LIST, query, codec.vm_list_reply)

    async def list_hosts(self, query: lm.ListHosts | None = None) -> list[m.HostInfo]:
        """Every host, asked for page by page."""
        query = query or lm.ListHosts()
        pages = await self._pages(subjects.HOST_LIST, query, codec.host_list_reply)
        return [host for page in pages for host in page.hosts]

    async def list_hosts_page(self, query: lm.ListHosts) -> lm.HostListReply:
        return await self._call(subjects.HOST_LIST, query, codec.host_list_reply)

    async def _host(
        self, subject: str, host_id: str, request_id: str | None, *, cold: bool = False
    ) -> m.HostInfo:
        body = m.HostRef(host_id=host_id, request_id=request_id, cold=cold)
        reply = await self._call(subject, body, codec.host_reply)
        assert reply.host is not None
        return reply.host

    async def cordon_host(self, host_id: str, request_id: str | None = None) -> m.HostInfo:
        return await self._host(subjects.HOST_CORDON, host_id, request_id)

    async def uncordon_host(self, host_id: str, request_id: str | None = None) -> m.HostInfo:
        return await self._host(subjects.HOST_UNCORDON, host_id, request_id)

    async def drain_host(
        self, host_id: str, request_id: str | None = None, *, cold: bool = False
    ) -> m.HostInfo:
        """Drain: live migration for every running VM, or stop and start with ``cold``."""
        return await self._host(subjects.HOST_DRAIN, host_id, request_id, cold=cold)

    async def list_sizes(self) -> list[m.Size]:
        pages = await self._pages(subjects.SIZES_LIST, lm.ListSizes(), codec.size_list_reply)
        return [size for page in pages for size in page.sizes]

    async def usage(self, query: UsageQuery | None = None) -> UsageReport:
        body = query or UsageQuery()
        reply = await self._call(subjects.USAGE_GET, body, codec.usage_reply)
        assert reply.usage is not None
        return reply.usage

    async def capture_vm(self, request: m.CaptureVm) -> m.VmInfo:
        return await self._vm(subjects.VM_CAPTURE, request)

    async def attach_disk(self, request: m.AttachDisk) -> m.VmInfo:
        return await self._vm(subjects.DISK_ATTACH, request)

    async def detach_disk(self, request: m.DetachDisk) -> m.VmInfo:
        return await self._vm(subjects.DISK_DETACH, request)

    async def list_images(self) -> list[ImageInfo]:
        pages = await self._pages(subjects.IMAGE_LIST, ListImages(), codec.image_list_reply)
        return [image for page in pages for image in page.images]

    async def _image(self, subject: str, body: msgspec.Struct) -> ImageInfo:
        reply = await self._call(subject, body, codec.image_reply)
        assert reply.image is not None
        return reply.image

    async def upload_image(
        self, path: Path, name: str, *, os: str = "linux", request_id: str | None = None
    ) -> ImageInfo:
        """Stage the bytes of ``path`` in the images object store, then register them as the
        gallery image ``name`` (the scheduler checks the bytes and commits the object)."""
        staged = await stage_image(self._nc.jetstream(), path)
        body = UploadImage(
            name=name,
            sha256=staged.sha256,
            size_bytes=staged.size_bytes,
            os=os,
            request_id=request_id,
            nuid=staged.nuid,
        )
        return await self._image(subjects.IMAGE_UPLOAD, body)

    async def delete_image(self, name: str, request_id: str | None = None) -> ImageInfo:
        return await self._image(subjects.IMAGE_DELETE, ImageRef(name=name, request_id=request_id))

    # ------------------------------------------------------------------ networks

    async def _vnet(self, subject: str, body: msgspec.Struct) -> VnetInfo:
        reply = await self._call(subject, body, codec.vnet_reply)
        assert reply.vnet is not None
        return reply.vnet

    async def create_vnet(self, request: CreateVnet) -> VnetInfo:
        return await self._vnet(subjects.VNET_CREATE, request)

    async def get_vnet(self, name: str) -> VnetInfo:
        return await self._vnet(subjects.VNET_GET, VnetRef(name=name))

    async def delete_vnet(self, name: str, request_id: str | None = None) -> VnetInfo:
        return await self._vnet(subjects.VNET_DELETE, VnetRef(name=name, request_id=request_id))

    async def list_vnets(self, query: ListVnets | None = None) -> list[VnetInfo]:
        pages = await self._pages(subjects.VNET_LIST, query or ListVnets(), codec.vnet_list_reply)
        return [vnet for page in pages for vnet in page.vnets]

    async def add_endpoint(self, request: AddEndpoint) -> m.VmInfo:
        return await self._vm(subjects.ENDPOINT_ADD, request)

    async def remove_endpoint(self, request: RemoveEndpoint) -> m.VmInfo:
        return await self._vm(subjects.ENDPOINT_REMOVE, request)

    # ------------------------------------------------------------------ consoles (the agents')

    async def console_request(self, subject: str, body: msgspec.Struct) -> ConsoleReply:
        """A console request, answered by the agent running the VM (not the scheduler)."""
        host = subject.split(".")[2]
        try:
            msg = await self._nc.request(subject, codec.encode(body), timeout=self._timeout_s)
        except NoRespondersError as exc:
            detail = f"host {host} does not serve this console (agent down, or the VM moved)"
            raise ApiError(m.ErrorCode.UNAVAILABLE, detail) from exc
        except NatsTimeoutError as exc:
            detail = f"host {host} did not answer within {self._timeout_s}s"
            raise ApiError(m.ErrorCode.UNAVAILABLE, detail) from exc
        reply = codec.console_reply.decode(msg.data)
        if reply.error is not None:
            raise ApiError(reply.error.code, reply.error.detail)
        return reply

    async def console_tail(self, host: str, vm: str, max_bytes: int) -> ConsoleReply:
        body = ConsoleTail(max_bytes=max_bytes)
        return await self.console_request(subjects.console_tail(host, vm), body)

    async def console_type(self, host: str, vm: str, data: bytes) -> None:
        await self.console_request(subjects.console_input(host, vm), ConsoleInput(data=data))

    async def console_follow(self, host: str, vm: str) -> Subscription:
        """Subscribe to the VM's live console output (``ConsoleEvent`` messages)."""
        return await self._nc.subscribe(subjects.console_output(host, vm))

    async def submit_job(self, api_subject: str, body: msgspec.Struct, msg_id: str) -> int:
        """Publish a job on the durable jobs stream; returns its stream sequence once durable."""
        js = self._nc.jetstream()
        ack = await js.publish(
            subjects.job_subject(api_subject),
            codec.encode(body),
            timeout=self._timeout_s,
            headers={"Nats-Msg-Id": msg_id},
        )
        return ack.seq
