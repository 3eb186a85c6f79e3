"""One ``qemu-system-x86_64`` process per VM: its command line, launch, files and liveness.

The process is started with ``-daemonize`` (it outlives the agent, and it is no child of the
agent, so an agent restart neither kills nor orphans it) and ``-S`` (vCPUs start stopped: the
driver lets them run over QMP unless the VM was fenced meanwhile). Per VM, in
``<root>/vms/<name>/``: ``vm.json`` (spec and generation), ``qemu.pid``, ``qmp.sock`` (the
agent's monitor), ``guard.sock`` (the fence guard's) and ``serial.log`` (the guest's console:
the readiness marker, and the tail of a failed boot). NICs are taps made before the launch
(hostagent/drivers/qemunics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from common.errors import DriverError
from common.messages import VmSpec
from common.waiting import poll
from hostagent.accel import Accel
from hostagent.drivers import seriallog
from hostagent.drivers.qemunics import nic_args
from hostagent.hostcmd import HostCommands

READY_MARKER = b"STRATUS-READY"
"""Printed on the serial console by a guest that finished booting."""
FAILED_MARKER = b"STRATUS-FAILED"
"""Printed by the boot kit's initramfs when it cannot mount the OS disk."""
LAUNCH_TIMEOUT_S = 30.0
TCG_RAM_PAD_KIB = 8
"""Under TCG a guest gets this much RAM beyond its size, so that its RAM is not a multiple of
256 KiB. QEMU before 9.0 (fixed upstream by 03bfc2188f, "physmem: Fix migration dirty bitmap
coherency with TCG memory access"; Debian 12's 7.2 lacks it) syncs the migration's dirty bitmap
of such a RAM block 64 pages at a time and forgets to make TCG's TLB entries of the cleared pages
track writes again: a store through an entry made before the sync leaves the page clean, it is
never sent again, and the destination runs with a stale page (guest kernels crashed in the slab
allocator after a live migration; pages of RAM differed in 7 of 12 migrations slowed to 16 MiB/s,
see rigs/migloop.py). Any other size takes QEMU's page-by-page path, which does reset the TLB
entries. QEMU rounds ``-m`` up to 8 KiB."""
SERIAL_TAIL_LINES = 12

Drive = Path | Mapping[str, object]
"""A disk as QEMU opens it: a host-local qcow2 file, or a replicated disk's ``-blockdev``."""


@dataclass(frozen=True, slots=True)
class QemuSettings:
    qemu_binary: str
    accel: Accel
    kernel: Path
    initramfs: Path
    boot_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    max_concurrent_boots: int = 2
    netns: str | None = None
    """The network namespace QEMU and the taps live in; None: the agent's own (tests run two
    "hosts" on one machine as two namespaces)."""
    nics: bool = True
    """Give guests their NICs (taps on the networks' bridges). False where the host's networks
    are simulated (hostagent/netlinux.py ``uses_kernel_networks``): guests boot without one."""


@dataclass(frozen=True, slots=True)
class VmFiles:
    dir: Path

    @property
    def meta(self) -> Path:
        return self.dir / "vm.json"

    @property
    def pid(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def guard(self) -> Path:
        """A second QMP monitor, reserved for the host's fence guard (hostagent/fenceguard.py)."""
        return self.dir / "guard.sock"

    @property
    def serial(self) -> Path:
        return self.dir / "serial.log"

    @property
    def console(self) -> Path:
        """The serial console's socket (QEMU listens; the agent connects to type)."""
        return self.dir / "console.sock"

    @property
    def stderr(self) -> Path:
        return self.dir / "qemu.err"

    def clear_run_files(self) -> None:
        for path in (self.pid, self.qmp, self.guard, self.console):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class IncomingMeta(msgspec.Struct, kw_only=True):
    """Where a VM waiting for its state by live migration listens (qemumigrate.py)."""

    address: str
    migration_port: int
    nbd_port: int


class VmMeta(msgspec.Struct, kw_only=True):
    """What the driver keeps of a VM across agent restarts and stop/start."""

    spec: VmSpec
    generation: int
    accel: str = ""
    incoming: IncomingMeta | None = None
    """Set while the VM waits for its state (live migration), until it is let run."""
    arrived: bool = False
    """The VM came by live migration: it booted on another host, and its serial log here has
    no readiness marker."""


def write_meta(files: VmFiles, meta: VmMeta) -> None:
    files.dir.mkdir(parents=True, exist_ok=True)
    partial = files.meta.with_name(".vm.json.partial")
    partial.write_bytes(msgspec.json.encode(meta))
    partial.replace(files.meta)


def read_meta(files: VmFiles) -> VmMeta | None:
    try:
        return msgspec.json.decode(files.meta.read_bytes(), type=VmMeta)
    except (OSError, msgspec.DecodeError):
        return None


def vcpus(spec: VmSpec) -> int:
    return max(1, math.ceil(spec.cpu_milli / 1000))


def ram_size(settings: QemuSettings, spec: VmSpec) -> str:
    """QEMU's ``-m``: the VM's memory, padded under TCG (``TCG_RAM_PAD_KIB``)."""
    if settings.accel != "kvm":  # "tcg", perhaps with options
        return f"{spec.mem_mib * 1024 + TCG_RAM_PAD_KIB}K"
    return str(spec.mem_mib)


def qemu_args(
    settings: QemuSettings,
    spec: VmSpec,
    disks: Sequence[Drive],
    extra: Sequence[str] = (),
    *,
    pidfile: Path = Path("qemu.pid"),
) -> list[str]:
    """The command line; relative paths are resolved in the VM's directory (the launch cwd).
    ``extra`` (``-incoming defer`` for a live migration's destination) changes no device: the
    migration stream needs the very same device models on both sides. ``pidfile`` is given
    absolute by :func:`launch`: it names the VM's directory on the command line, which is how
    :func:`pid_alive`, the fence guard and ``stop_guests`` know this driver's QEMU (a VM whose
    disks are all replicated has no other path under the driver's root there)."""
    args = [
        settings.qemu_binary,
        *("-name", f"guest=stratus-{spec.name}"),
        *("-accel", settings.accel, "-m", ram_size(settings, spec), "-smp", str(vcpus(spec))),
        *("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-S"),
        *("-kernel", str(settings.kernel), "-initrd", str(settings.initramfs)),
        *("-append", f"console=ttyS0 quiet panic=-1 stratus.vm={spec.name}"),
        *("-chardev", "socket,id=console,path=console.sock,server=on,wait=off,logfile=serial.log"),
        *("-serial", "chardev:console", "-pidfile", str(pidfile), "-daemonize"),
        *("-qmp", "unix:qmp.sock,server=on,wait=off"),
        *("-qmp", "unix:guard.sock,server=on,wait=off"),
    ]
    for index, disk in enumerate(disks):
        if isinstance(disk, Path):
            args += [
                *("-drive", f"if=none,id=disk{index},file={disk},format=qcow2,cache=writeback"),
                *("-device", f"virtio-blk-pci,drive=disk{index}"),
            ]
        else:  # a replicated disk: its quorum of NBD clients (qemuquorum.py)
            args += [
                *("-blockdev", json.dumps(disk, separators=(",", ":"))),
                *("-device", f"virtio-blk-pci,drive=disk{index},werror=stop,rerror=stop"),
            ]
    return args + (nic_args(spec) if settings.nics else []) + list(extra)


async def launch(
    settings: QemuSettings,
    spec: VmSpec,
    files: VmFiles,
    disks: Sequence[Drive],
    extra: Sequence[str] = (),
) -> int:
    """Start the VM's QEMU (vCPUs stopped); return its pid once its QMP socket listens."""
    files.clear_run_files()
    with contextlib.suppress(FileNotFoundError):
        files.serial.unlink()
    # No pipes: the daemonized QEMU could keep them open, and stderr goes to a file instead.
    with files.stderr.open("wb") as stderr:
        try:
            proc = await asyncio.create_subprocess_exec(
                *HostCommands(settings.netns).argv(
                    *qemu_args(settings, spec, disks, extra, pidfile=files.pid.absolute())
                ),
                cwd=files.dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        except FileNotFoundError as exc:
            raise DriverError(
                f"{settings.qemu_binary} not found on this host: "
                "apt-get install -y --no-install-recommends qemu-system-x86",
                retryable=True,
            ) from exc
    try:
        async with asyncio.timeout(LAUNCH_TIMEOUT_S):
            returncode = await proc.wait()
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise DriverError(
            f"qemu did not start within {LAUNCH_TIMEOUT_S:g}s", retryable=True
        ) from exc
    if returncode != 0:
        detail = files.stderr.read_text(errors="replace").strip()
        raise DriverError(f"qemu failed to start: {detail}", retryable=False)
    pid = read_pid(files)
    if pid is None:
        raise DriverError("qemu started but wrote no pid file", retryable=False)
    return pid


def read_pid(files: VmFiles) -> int | None:
    try:
        return int(files.pid.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int, root: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) QEMU of this driver (named by ``root``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and os.fsencode(root) in cmdline


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


async def wait_exit(pid: int, root: Path, timeout_s: float) -> bool:
    """Wait until ``pid`` is gone; False if it still runs after ``timeout_s``."""

    async def gone() -> bool | None:
        return None if pid_alive(pid, root) else True

    return await poll(gone, timeout_s=timeout_s, interval_s=0.02) is not None


def read_serial(files: VmFiles) -> bytes:
    """What ``serial.log`` keeps: its head (the boot) and its recent output (seriallog.py)."""
    try:
        return seriallog.read_kept(files.serial)
    except OSError:
        return b""


def serial_tail(files: VmFiles, lines: int = SERIAL_TAIL_LINES) -> str:
    text = read_serial(files).decode(errors="replace").replace("\r", "")
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(serial console empty)"
