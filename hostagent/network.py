"""The seam between the host agent and a host's guest networking.

The scheduler sends each host its whole desired network state (``ConfigureNetworks``): which
virtual networks the host carries, the other hosts that carry them, the DHCP leases of its VMs
and the endpoints (port forwards) it serves; then what changes in it (``UpdateNetworks``). A
backend makes the host match that state:

- the Linux backend with kernel objects: per network a bridge holding the gateway address, a
  VXLAN device (VNI of the network) with a head-end replication entry per peer, a DHCP server
  with the static leases, and nftables DNAT rules for the endpoints;
- the simulated backend (with the fake driver) keeps the same accounts without touching the
  kernel, so scale tests and benchmarks run the same agent paths.

A VM's taps are the driver's business (it creates them when it starts the VM and removes them
with it), named by :func:`tap_name` and enslaved to :func:`bridge_name` of the NIC's network.

Contract, for every implementation:

- :meth:`apply` is idempotent and converges: it creates what is missing, changes what differs and
  removes what the configuration no longer names (networks, leases, endpoints), including
  objects left by an earlier run of the agent (re-adoption after a restart). It raises
  :class:`common.errors.NetworkError` when it cannot; what it could apply stays applied, and
  :attr:`applied_digest` is unchanged.
- :meth:`update` applies the changes of an ``UpdateNetworks`` to the configuration in place:
  it raises :class:`common.errors.NetworkError` when that configuration is not the update's
  ``base``, when the update removes what is not there or adds what is, when the result's digest
  (common/netconfig.py) is not the update's ``digest``, or when it cannot apply it. The Linux
  backend makes the merged configuration as :meth:`apply` would; the simulated one applies the
  changes in O(their size).
- :attr:`applied_digest` is the digest of the last configuration applied in full ("" before
  the first); the agent reports it in every heartbeat.
- :meth:`has_network` tells whether the network with that VNI is in place (a VM with a NIC in
  it may start).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from common.network_messages import ConfigureNetworks, UpdateNetworks

IFNAME_MAX = 15
"""Linux interface names are at most 15 bytes."""


def bridge_name(vni: int) -> str:
    """The host bridge of the network with VXLAN id ``vni``: ``stbr<vni>``."""
    return f"stbr{vni}"


def vxlan_name(vni: int) -> str:
    """The VXLAN device of the network with id ``vni``: ``stvx<vni>``."""
    return f"stvx{vni}"


def tap_name(vm: str, index: int) -> str:
    """The tap of NIC ``index`` of ``vm``: ``stt`` + 8 hex digits of the VM's name + index.

    VM names are up to 63 characters, so the name is hashed; the digest makes a collision
    between two VMs on one host a 1-in-4-billion event, and the agent checks for one anyway.
    """
    digest = hashlib.blake2b(vm.encode(), digest_size=4).hexdigest()
    return f"stt{digest}{index}"


class NetworkBackend(Protocol):
    name: str
    """``linux`` or ``simulated``."""

    @property
    def applied_digest(self) -> str: ...

    async def apply(self, config: ConfigureNetworks) -> None:
        """Make the host's networks, leases and endpoints exactly ``config``."""
        ...

    async def update(self, delta: UpdateNetworks) -> None:
        """Apply the changes ``delta`` to the configuration in place (``delta.base``)."""
        ...

    def has_network(self, vni: int) -> bool: ...

    async def close(self) -> None:
        """Release what the backend holds in this process. Kernel objects and the DHCP servers
        stay, so that guests keep their network while the agent restarts."""
        ...
