"""A QEMU VM's NICs: one tap per ``NicSpec`` on its network's bridge, and the QEMU arguments
that attach a virtio-net device to it.

The network backend builds the bridges (``bridge_name(vni)``); the driver builds the taps
(``tap_name(vm, index)``) just before it launches the VM and removes them with it. A tap is a
persistent one (``ip tuntap add``): QEMU opens it by name (``script=no``: nothing else runs),
and it outlives QEMU, so the driver removes it when the VM is stopped, destroyed or gone. Its
``ifalias`` names its bridge, so that the backend's self-check can enslave it again should the
bridge be made anew. Taps of VMs the driver does not hold (left by a crash) are removed when it
adopts VMs at start.
"""

from __future__ import annotations

import json

from common.errors import DriverError
from common.messages import VmSpec
from hostagent.hostcmd import HostCommands
from hostagent.network import bridge_name, tap_name

TAP_PREFIX = "stt"


def taps(spec: VmSpec) -> list[str]:
    """The taps of ``spec``'s NICs, in NIC order."""
    return [tap_name(spec.name, nic.index) for nic in spec.nics]


def nic_args(spec: VmSpec) -> list[str]:
    """``-netdev tap`` + ``-device virtio-net-pci`` per NIC (no option ROM: the guest boots
    from ``-kernel``, and loading the PXE ROM costs ~0.1 s of every boot under TCG)."""
    args: list[str] = []
    for nic in spec.nics:
        netdev, tap = f"nic{nic.index}", tap_name(spec.name, nic.index)
        args += [
            *("-netdev", f"tap,id={netdev},ifname={tap},script=no,downscript=no"),
            *("-device", f"virtio-net-pci,netdev={netdev},mac={nic.mac},romfile="),
        ]
    return args


async def _bridge_mtu(commands: HostCommands, bridge: str) -> int | None:
    done = await commands.run("ip", "-j", "link", "show", "dev", bridge)
    if not done.ok:
        return None
    try:
        return int(json.loads(done.stdout)[0]["mtu"])
    except (ValueError, LookupError, TypeError):
        return None


async def plug(commands: HostCommands, spec: VmSpec) -> None:
    """Create ``spec``'s taps on their bridges; ``DriverError`` (retryable) when a bridge is
    missing (the host does not carry that network yet) or a tap cannot be made. On failure the
    taps made so far are removed."""
    made: list[str] = []
    try:
        for nic in spec.nics:
            tap, bridge = tap_name(spec.name, nic.index), bridge_name(nic.vni)
            mtu = await _bridge_mtu(commands, bridge)
            if mtu is None:
                raise DriverError(
                    f"network {nic.vnet} (bridge {bridge}) is not on this host", retryable=True
                )
            await commands.run("ip", "link", "del", "dev", tap)  # left by a crash, if any
            await _check(commands, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
            made.append(tap)
            await _check(
                commands, "ip", "link", "set", "dev", tap, "addrgenmode", "none", "master", bridge,
                "mtu", str(mtu), "alias", bridge, "up",
            )  # fmt: skip
    except DriverError:
        await unplug(commands, made)
        raise


async def _check(commands: HostCommands, *args: str) -> None:
    done = await commands.run(*args)
    if not done.ok:
        raise DriverError(f"cannot plug a NIC: {done.describe()}", retryable=True)


async def unplug(commands: HostCommands, names: list[str]) -> None:
    """Remove these taps (those already gone are fine)."""
    for tap in names:
        await commands.run("ip", "link", "del", "dev", tap)


async def host_taps(commands: HostCommands) -> set[str]:
    """Every tap on the host with the driver's prefix."""
    done = await commands.run("ip", "-j", "link", "show", "type", "tun")
    if not done.ok:
        return set()
    try:
        names = {str(link["ifname"]) for link in json.loads(done.stdout or "[]")}
    except (ValueError, LookupError, TypeError):
        return set()
    return {name for name in names if name.startswith(TAP_PREFIX)}
