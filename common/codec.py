"""One encoder and one typed decoder per message type or union (JSON on the wire)."""

from __future__ import annotations

from typing import Final

import msgspec

from common import messages as m

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Largest API or job body the scheduler accepts; bigger ones get ``too_large``."""

encoder: Final = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return encoder.encode(message)


create_vm: Final = msgspec.json.Decoder(m.CreateVm)
vm_ref: Final = msgspec.json.Decoder(m.VmRef)
host_ref: Final = msgspec.json.Decoder(m.HostRef)
list_vms: Final = msgspec.json.Decoder(m.ListVms)
list_hosts: Final = msgspec.json.Decoder(m.ListHosts)
list_sizes: Final = msgspec.json.Decoder(m.ListSizes)
attach_disk: Final = msgspec.json.Decoder(m.AttachDisk)
detach_disk: Final = msgspec.json.Decoder(m.DetachDisk)
capture_vm: Final = msgspec.json.Decoder(m.CaptureVm)
upload_image: Final = msgspec.json.Decoder(m.UploadImage)
image_ref: Final = msgspec.json.Decoder(m.ImageRef)
image_captured: Final = msgspec.json.Decoder(m.ImageCaptured)
list_images: Final = msgspec.json.Decoder(m.ListImages)
image_reply: Final = msgspec.json.Decoder(m.ImageReply)
image_list_reply: Final = msgspec.json.Decoder(m.ImageListReply)

vm_reply: Final = msgspec.json.Decoder(m.VmReply)
vm_list_reply: Final = msgspec.json.Decoder(m.VmListReply)
host_list_reply: Final = msgspec.json.Decoder(m.HostListReply)
host_reply: Final = msgspec.json.Decoder(m.HostReply)
size_list_reply: Final = msgspec.json.Decoder(m.SizeListReply)
usage_query: Final = msgspec.json.Decoder(m.UsageQuery)
usage_reply: Final = msgspec.json.Decoder(m.UsageReply)

heartbeat: Final = msgspec.json.Decoder(m.Heartbeat)
heartbeat_ack: Final = msgspec.json.Decoder(m.HeartbeatAck)
host_commands: Final = msgspec.json.Decoder(m.HostCommands)
event: Final = msgspec.json.Decoder(m.Event)


def empty_as_object(body: bytes) -> bytes:
    """An empty body means ``{}`` (list requests need no fields)."""
    return body if body.strip() else b"{}"
