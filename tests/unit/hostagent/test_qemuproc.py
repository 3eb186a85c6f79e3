"""The QEMU command line: the guest's memory size."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.messages import VmSpec
from hostagent.accel import Accel
from hostagent.drivers.qemuproc import QemuSettings, qemu_args

KIB = 1024


def ram_kib(accel: Accel, mem_mib: int) -> int:
    settings = QemuSettings("qemu-system-x86_64", accel, Path("vmlinux"), Path("initrd"))
    vm = VmSpec(name="m", size="Tiny", cpu_milli=1000, mem_mib=mem_mib, image="tiny")
    args = qemu_args(settings, vm, [])
    size = args[args.index("-m") + 1]
    return int(size.removesuffix("K")) if size.endswith("K") else int(size) * KIB


@pytest.mark.parametrize("mem_mib", [72, 96, 128, 1024, 4096])
def test_under_tcg_guest_ram_is_no_multiple_of_256_kib_so_migration_tracks_every_write(
    mem_mib: int,
) -> None:
    """QEMU 7.2 loses guest writes during a live migration of a TCG guest whose RAM is a
    multiple of 256 KiB (qemuproc.TCG_RAM_PAD_KIB): the destination would run on stale pages."""
    kib = ram_kib("tcg", mem_mib)
    assert kib % 256 != 0
    assert mem_mib * KIB < kib <= mem_mib * KIB + 64, "the guest gets what it asked, barely more"
    assert kib % 8 == 0, "QEMU rounds the size to 8 KiB: the line says what the guest gets"


def test_under_kvm_guest_ram_is_its_size() -> None:
    assert ram_kib("kvm", 96) == 96 * KIB
