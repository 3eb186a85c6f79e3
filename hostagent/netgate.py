"""The agent's view of its host's networks: what is in place, what is being applied, and the VM
starts that wait for them. Pure (part of :class:`hostagent.state.AgentState`).

``ConfigureNetworks`` and ``UpdateNetworks`` are host-level commands: one is applied at a time,
the others wait in order (a whole configuration drops those before it: it replaces them). An
update applies only to the configuration it is based on: one that is not (the agent restarted, a
message was lost or came out of order) is ignored, and the agent keeps reporting its digest, so
the scheduler sends the whole configuration. A ``StartVm`` whose NIC's network (or the NIC's
DHCP lease) is not in place waits while a configuration is being applied (the scheduler sends
the one it needs ahead of it, in the same batch), and is judged again when it is applied; with
none on the way it is dropped, never started without its bridge: the scheduler sends the
configuration again (its heartbeat shows the digest differs), and the start after it.

What is in place is kept as the changes come (the leases by network and VM): an update costs
what it changes, not what the host has.
"""

from __future__ import annotations

from common.messages import VmSpec
from common.network_messages import ConfigureNetworks, UpdateNetworks
from hostagent.ordergate import OrderGate
from hostagent.stimuli import ApplyNetworks, Instruction, NetworksApplied, Note

NetworkCommand = ConfigureNetworks | UpdateNetworks


class NetworkGate(OrderGate[NetworkCommand]):
    __slots__ = ("leases", "vni_of", "vnis", "waiting")

    what = "network"

    def __init__(self) -> None:
        super().__init__()
        self.vnis: frozenset[int] = frozenset()
        """The networks in place (by VNI)."""
        self.vni_of: dict[str, int] = {}
        """The VNI of each network named so far, by name (an update names networks so)."""
        self.leases: dict[tuple[int, str], str] = {}
        """The DHCP leases known in place: (VNI, VM) -> MAC. A guest started without its
        lease would boot without its address."""
        self.waiting: set[str] = set()
        """VMs whose StartVm waits for a configuration being applied."""

    def _base(self, config: NetworkCommand) -> str | None:
        return config.base if isinstance(config, UpdateNetworks) else None

    def _apply(self, config: NetworkCommand) -> Instruction:
        return ApplyNetworks(config, self.vnis)

    def applied(self, done: NetworksApplied, out: list[Instruction]) -> bool:
        """The backend is done; True when the applied digest changed (the report did)."""
        self.vnis = done.vnis
        if isinstance(done.config, UpdateNetworks):
            self._updated(done.config, ok=done.error is None)
        else:
            self._configured(done.config, ok=done.error is None)
        changed = self._done(done.digest)
        if done.error is not None:
            out.append(
                Note.error(
                    "networks not applied digest=%s error=%s", done.config.digest, done.error
                )
            )
        else:
            out.append(Note.info("networks applied digest=%s", done.digest))
        self._go_on(out)
        return changed

    def _configured(self, config: ConfigureNetworks, *, ok: bool) -> None:
        self.vni_of.update((n.vnet, n.vni) for n in config.networks)
        leases = {(n.vni, lease.vm): lease.mac for n in config.networks for lease in n.leases}
        # After a failure only what both the last configuration and this one name is known.
        self.leases = leases if ok else {k: m for k, m in self.leases.items() if leases.get(k) == m}

    def _updated(self, update: UpdateNetworks, *, ok: bool) -> None:
        """What the update changed in the leases known (after a failure: only its removals)."""
        for vnet in update.removed:
            vni = self.vni_of.get(vnet)
            self.leases = {k: m for k, m in self.leases.items() if k[0] != vni}
        for change in update.changed:
            vni = self.vni_of.get(change.vnet, 0)
            for vm in change.leases_removed:
                self.leases.pop((vni, vm), None)
        if not ok:
            return
        for network in update.added:
            self.vni_of[network.vnet] = network.vni
            self.leases.update(((network.vni, lease.vm), lease.mac) for lease in network.leases)
        for change in update.changed:
            vni = self.vni_of.get(change.vnet, 0)
            self.leases.update(((vni, lease.vm), lease.mac) for lease in change.leases_added)

    def missing(self, spec: VmSpec) -> list[str]:
        """The networks of ``spec``'s NICs not in place (or without the NIC's lease)."""
        return [
            nic.vnet
            for nic in spec.nics
            if nic.vni not in self.vnis or self.leases.get((nic.vni, spec.name)) != nic.mac
        ]

    def may_start(self, spec: VmSpec, out: list[Instruction]) -> bool | None:
        """True: ``spec``'s networks are in place. None: they may be once the configuration
        being applied is (the start waits). False: they are not, and none is on the way."""
        missing = self.missing(spec)
        if not missing:
            return True
        if self.pending:
            self.waiting.add(spec.name)
            out.append(Note.debug("start waits for networks vm=%s networks=%s", spec.name, missing))
            return None
        out.append(
            Note.info("start deferred, networks not in place vm=%s networks=%s", spec.name, missing)
        )
        return False
