"""How the QEMU driver opens a replicated disk and learns its quorum back after a restart."""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.messages import DiskKind, DiskSpec, VmSpec
from common.replica_messages import ReplicaRef
from common.spec_messages import DiskStorage
from hostagent.drivers.qemuproc import QemuSettings, VmFiles, qemu_args
from hostagent.drivers.qemuquorum import blockdev, drives, failed_host, initial, load, save

SETTINGS = QemuSettings("qemu-system-x86_64", "tcg", Path("vmlinux"), Path("initrd"))
A = ReplicaRef(host="h1", address="10.0.0.1", port=10809)
B = ReplicaRef(host="h2", address="10.0.0.2", port=10810)


class Server(msgspec.Struct):
    host: str


class Node(msgspec.Struct, rename="kebab"):
    node_name: str
    vote_threshold: int = 0
    read_pattern: str = ""
    children: list[Node] = []
    export: str = ""
    server: Server | None = None


def spec() -> VmSpec:
    disks = [
        DiskSpec(disk_id="vm-1-os", kind=DiskKind.OS, image="tiny"),
        DiskSpec(disk_id="vm-1-data-1", kind=DiskKind.DATA, size_mib=64,
                 storage=DiskStorage.REPLICATED, replicas=[A, B]),
        DiskSpec(disk_id="vm-1-data-2", kind=DiskKind.DATA, size_mib=64),
    ]  # fmt: skip
    return VmSpec(name="vm-1", size="S", cpu_milli=1000, mem_mib=96, image="tiny", disks=disks)


def test_a_replicated_disk_is_an_outer_quorum_over_a_quorum_of_every_copy() -> None:
    [disk] = initial(spec())
    node = msgspec.json.decode(msgspec.json.encode(blockdev(disk)), type=Node)
    assert (node.node_name, node.vote_threshold, node.read_pattern) == ("disk1", 1, "fifo")
    [inner] = node.children
    assert (inner.node_name, inner.vote_threshold) == ("d1q0", 2)
    assert [(c.export, c.server and c.server.host) for c in inner.children] == [
        ("vm-1-data-1", "10.0.0.1"),
        ("vm-1-data-1", "10.0.0.2"),
    ]
    args = qemu_args(SETTINGS, spec(), drives(spec(), [Path("/d/os"), Path("/d/d2")], [disk]))
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device" and "blk" in args[i + 1]]
    assert devices == [
        "virtio-blk-pci,drive=disk0",
        "virtio-blk-pci,drive=disk1,werror=stop,rerror=stop",
        "virtio-blk-pci,drive=disk2",
    ]


def test_a_failed_child_names_its_host_only_in_the_current_quorum() -> None:
    [disk] = initial(spec())
    assert failed_host([disk], "d1q0c1") == (disk, "h2")
    assert failed_host([disk], "d1q1c1") is None  # an inner quorum since replaced
    assert failed_host([disk], "d1q0c7") is None


def test_the_quorum_is_learnt_back_at_its_generation_else_taken_from_the_spec(
    tmp_path: Path,
) -> None:
    files = VmFiles(tmp_path)
    [disk] = initial(spec())
    disk.members, disk.seq, disk.slot = [A], 3, 3
    disk.joining = {"h3": 0.5}
    save(files, 7, [disk])
    [back] = load(files, 7, spec())
    assert (back.members, back.seq, back.slot, back.joining) == ([A], 3, 3, {})
    [fresh] = load(files, 8, spec())
    assert (fresh.members, fresh.seq) == ([A, B], 0)
