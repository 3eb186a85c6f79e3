"""One encoder and one typed decoder per message type or union (JSON on the wire)."""

from __future__ import annotations

import hashlib
from typing import Final, Generic, TypeVar

import msgspec

from common import list_messages as lm, messages as m
from common.console_messages import ConsoleEvent, ConsoleInput, ConsoleReply, ConsoleTail
from common.image_messages import (
    ImageCaptured,
    ImageListReply,
    ImageRef,
    ImageReply,
    ListImages,
    UploadImage,
)
from common.migration_messages import MigrateVm
from common.network_messages import (
    AddEndpoint,
    CreateVnet,
    ListVnets,
    RemoveEndpoint,
    VnetListReply,
    VnetRef,
    VnetReply,
)
from common.usage_messages import UsageQuery, UsageReply

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Largest API or job body the scheduler accepts; bigger ones get ``too_large``."""

encoder: Final = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return encoder.encode(message)


_inventory_encoder: Final = msgspec.msgpack.Encoder()


def inventory_digest(vms: list[m.ObservedVm]) -> str:
    """A digest of an inventory (16 hex digits): equal inventories, equal digests. Agents send
    it in heartbeats; the scheduler computes it for the inventory it expects of a host."""
    return hashlib.blake2b(_inventory_encoder.encode(vms), digest_size=8).hexdigest()


T = TypeVar("T")


class Decoder(Generic[T]):
    """A typed JSON decoder whose every refusal is a ``msgspec.DecodeError``: msgspec itself
    lets a ``UnicodeDecodeError`` out for invalid UTF-8 inside a string, which no handler
    expects (a job carrying such bytes stopped the scheduler)."""

    __slots__ = ("_decoder",)

    def __init__(self, decoder: msgspec.json.Decoder[T]) -> None:
        self._decoder = decoder

    def decode(self, data: bytes) -> T:
        try:
            return self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise msgspec.DecodeError(f"invalid UTF-8 at byte {exc.start}") from exc


create_vm: Final = Decoder(msgspec.json.Decoder(m.CreateVm))
vm_ref: Final = Decoder(msgspec.json.Decoder(m.VmRef))
host_ref: Final = Decoder(msgspec.json.Decoder(m.HostRef))
list_vms: Final = Decoder(msgspec.json.Decoder(lm.ListVms))
list_hosts: Final = Decoder(msgspec.json.Decoder(lm.ListHosts))
list_sizes: Final = Decoder(msgspec.json.Decoder(lm.ListSizes))
attach_disk: Final = Decoder(msgspec.json.Decoder(m.AttachDisk))
detach_disk: Final = Decoder(msgspec.json.Decoder(m.DetachDisk))
capture_vm: Final = Decoder(msgspec.json.Decoder(m.CaptureVm))
upload_image: Final = Decoder(msgspec.json.Decoder(UploadImage))
image_ref: Final = Decoder(msgspec.json.Decoder(ImageRef))
image_captured: Final = Decoder(msgspec.json.Decoder(ImageCaptured))
list_images: Final = Decoder(msgspec.json.Decoder(ListImages))
image_reply: Final = Decoder(msgspec.json.Decoder(ImageReply))
image_list_reply: Final = Decoder(msgspec.json.Decoder(ImageListReply))
create_vnet: Final = Decoder(msgspec.json.Decoder(CreateVnet))
vnet_ref: Final = Decoder(msgspec.json.Decoder(VnetRef))
list_vnets: Final = Decoder(msgspec.json.Decoder(ListVnets))
add_endpoint: Final = Decoder(msgspec.json.Decoder(AddEndpoint))
remove_endpoint: Final = Decoder(msgspec.json.Decoder(RemoveEndpoint))
migrate_vm: Final = Decoder(msgspec.json.Decoder(MigrateVm))
vnet_reply: Final = Decoder(msgspec.json.Decoder(VnetReply))
vnet_list_reply: Final = Decoder(msgspec.json.Decoder(VnetListReply))

vm_reply: Final = Decoder(msgspec.json.Decoder(m.VmReply))
vm_list_reply: Final = Decoder(msgspec.json.Decoder(lm.VmListReply))
host_list_reply: Final = Decoder(msgspec.json.Decoder(lm.HostListReply))
host_reply: Final = Decoder(msgspec.json.Decoder(m.HostReply))
size_list_reply: Final = Decoder(msgspec.json.Decoder(lm.SizeListReply))
usage_query: Final = Decoder(msgspec.json.Decoder(UsageQuery))
usage_reply: Final = Decoder(msgspec.json.Decoder(UsageReply))

heartbeat: Final = Decoder(msgspec.json.Decoder(m.Heartbeat))
heartbeat_ack: Final = Decoder(msgspec.json.Decoder(m.HeartbeatAck))
host_commands: Final = Decoder(msgspec.json.Decoder(m.HostCommands))
event: Final = Decoder(msgspec.json.Decoder(m.Event))
console_event: Final = Decoder(msgspec.json.Decoder(ConsoleEvent))
console_tail: Final = Decoder(msgspec.json.Decoder(ConsoleTail))
console_input: Final = Decoder(msgspec.json.Decoder(ConsoleInput))
console_reply: Final = Decoder(msgspec.json.Decoder(ConsoleReply))


def empty_as_object(body: bytes) -> bytes:
    """An empty body means ``{}`` (list requests need no fields)."""
    return body if body.strip() else b"{}"
