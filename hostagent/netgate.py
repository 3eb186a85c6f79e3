"""The agent's view of its host's networks: what is in place, what is being applied, and the VM
starts that wait for them. Pure (part of :class:`hostagent.state.AgentState`).

``ConfigureNetworks`` is a host-level command: one configuration is applied at a time (the
newest that arrived meanwhile goes next; older ones are skipped, since each is the whole
desired state). A ``StartVm`` whose NIC's network (or the NIC's DHCP lease) is not in place
waits while a configuration is being applied (the scheduler sends the one it needs ahead of
it, in the same batch), and is judged again when it is applied; with none on the way it is
dropped, never started without its bridge: the scheduler sends the configuration again (its
heartbeat shows the digest differs), and the start after it.
"""

from __future__ import annotations

from common.messages import VmSpec
from common.network_messages import ConfigureNetworks
from hostagent.stimuli import ApplyNetworks, Instruction, NetworksApplied, Note


class NetworkGate:
    __slots__ = ("_applying", "_next", "digest", "leases", "vnis", "waiting")

    def __init__(self) -> None:
        self.digest = ""
        """The digest of the last configuration applied in full ("" before the first)."""
        self.vnis: frozenset[int] = frozenset()
        """The networks in place (by VNI)."""
        self.leases: frozenset[tuple[int, str]] = frozenset()
        """The DHCP leases known in place, as (VNI, MAC): a guest started without its lease
        would boot without its address."""
        self.waiting: set[str] = set()
        """VMs whose StartVm waits for a configuration being applied."""
        self._applying: ConfigureNetworks | None = None
        self._next: ConfigureNetworks | None = None

    @property
    def pending(self) -> bool:
        """A configuration is being applied."""
        return self._applying is not None

    def receive(self, config: ConfigureNetworks, out: list[Instruction]) -> None:
        """A configuration arrived: applied now, or after the one being applied."""
        if self._applying is not None:
            self._next = config
            return
        self._applying = config
        out.append(ApplyNetworks(config))

    def applied(self, done: NetworksApplied, out: list[Instruction]) -> bool:
        """The backend is done; True when the applied digest changed (the report did)."""
        self._applying = None
        self.vnis = done.vnis
        leases = frozenset((n.vni, lease.mac) for n in done.config.networks for lease in n.leases)
        # After a failure only what both the last configuration and this one name is known.
        self.leases = leases if done.error is None else self.leases & leases
        changed = done.digest != self.digest
        self.digest = done.digest
        if done.error is not None:
            out.append(
                Note.error(
                    "networks not applied digest=%s error=%s", done.config.digest, done.error
                )
            )
        else:
            out.append(
                Note.info(
                    "networks applied digest=%s networks=%d endpoints=%d",
                    done.digest,
                    len(done.config.networks),
                    len(done.config.endpoints),
                )
            )
        following, self._next = self._next, None
        if following is not None:
            self.receive(following, out)
        return changed

    def missing(self, spec: VmSpec) -> list[str]:
        """The networks of ``spec``'s NICs not in place (or without the NIC's lease)."""
        return [
            nic.vnet
            for nic in spec.nics
            if nic.vni not in self.vnis or (nic.vni, nic.mac) not in self.leases
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
