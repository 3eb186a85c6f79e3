"""A QEMU VM's NICs on the command line, and the admission of a VM beside those a host holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import DriverError
from common.messages import VmSpec
from common.network_messages import NicSpec
from common.resources import Resources
from hostagent.drivers.qemunics import nic_args, taps
from hostagent.drivers.qemuproc import QemuSettings, VmFiles, qemu_args
from hostagent.drivers.qemuvm import QemuVm, admit
from hostagent.network import tap_name


def nic(index: int, vni: int = 4096, mac: str = "52:54:00:00:00:01") -> NicSpec:
    return NicSpec(index=index, vnet="web", vni=vni, mac=mac, ip="10.214.0.10", prefix_len=24,
                   gateway="10.214.0.1")  # fmt: skip


def spec(name: str, *nics: NicSpec, mem_mib: int = 96) -> VmSpec:
    return VmSpec(name=name, size="Tiny", cpu_milli=1000, mem_mib=mem_mib, image="tiny",
                  nics=list(nics))  # fmt: skip


def test_each_nic_is_a_tap_netdev_and_a_virtio_device_with_its_mac_and_no_rom() -> None:
    two = spec("web-1", nic(0), nic(1, vni=4097, mac="52:54:00:00:00:02"))
    assert taps(two) == [tap_name("web-1", 0), tap_name("web-1", 1)]
    tap0 = tap_name("web-1", 0)
    assert nic_args(two)[:4] == [
        "-netdev", f"tap,id=nic0,ifname={tap0},script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=nic0,mac=52:54:00:00:00:01,romfile=",
    ]  # fmt: skip
    settings = QemuSettings("qemu-system-x86_64", "tcg", Path("vmlinux"), Path("initrd"))
    assert qemu_args(settings, two, [])[-8:] == nic_args(two)
    assert nic_args(spec("no-nic")) == []


def test_a_vm_is_admitted_only_beside_vms_whose_taps_differ() -> None:
    held = [QemuVm(spec("web-1", nic(0)), 1, VmFiles(Path("/nonexistent")))]
    room = Resources(4000, 1024)
    admit(spec("web-2", nic(0)), held, room, 1.0)
    clash = spec("web-1", nic(0))  # the same name hashes to the same tap
    with pytest.raises(DriverError, match="would share tap") as refused:
        admit(clash, held, room, 1.0)
    assert not refused.value.retryable
    with pytest.raises(DriverError, match="insufficient memory") as full:
        admit(spec("big", mem_mib=2048), held, room, 1.0)
    assert full.value.retryable
