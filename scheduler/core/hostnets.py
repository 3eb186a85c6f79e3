"""A host's desired network state, and its delivery (level-triggered). Pure.

What a host should have is a function of the records: the networks of the NICs of the VMs
placed on it, each with its peers (the underlay addresses of the other up hosts carrying it,
sorted; hosts without one left out) and the DHCP leases of its VMs in it, plus the endpoints of
its VMs. ``ConfigureNetworks`` carries all of it, named by a digest of its canonical encoding
(the empty configuration's digest is "", which is what an agent that applied nothing reports:
a host without networks is sent nothing).

Delivery:

- a host whose own VMs' NICs or endpoints changed (``NetIndex.dirty_hosts``) gets its new
  configuration in the same step: ahead of the ``StartVm`` that needs it, in one batch, when it
  gets starts (``due``), else at the end of the step (``flush``); a burst of placements sends
  one configuration per host, not one per VM;
- a network whose set of hosts changed (``NetIndex.dirty_vnets``) gives every host carrying it
  new peers: they are sent at the next tick, coalesced (a host joining a network carried by
  hundreds would otherwise resend hundreds of configurations per step);
- a heartbeat whose ``network_digest`` is not the wanted one gets the configuration again
  (at most every ``command_retry_s``, like any resend).

Nothing here scans every host or VM: membership counts are kept by the index as records change.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left

from common import codec
from common.ids import HostId
from common.messages import AgentCommand
from common.network_messages import ConfigureNetworks, HostEndpoint, HostNetwork
from scheduler.core.context import StepContext
from scheduler.state.cluster import ClusterState
from scheduler.state.ipam import ip_text


def digest_of(config: ConfigureNetworks) -> str:
    """The digest of ``config`` (its own ``digest`` left empty): "" for the empty one."""
    if not config.networks and not config.endpoints:
        return ""
    body = codec.encode(
        ConfigureNetworks(networks=config.networks, endpoints=config.endpoints, digest="")
    )
    return hashlib.blake2b(body, digest_size=8).hexdigest()


class PeerLists:
    """The underlay addresses of each network's hosts, computed once per use (a step's sends)."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self._lists: dict[str, list[str]] = {}

    def of(self, vnet: str, own: str) -> list[str]:
        """The peers of a host at ``own`` in ``vnet``: sorted, without ``own``."""
        addresses = self._lists.get(vnet)
        if addresses is None:
            hosts = self._state.hosts
            addresses = self._lists[vnet] = sorted(
                {
                    record.underlay_ip
                    for host in self._state.net.hosts_of(vnet)
                    if (record := hosts.get(host)) is not None and record.up and record.underlay_ip
                }
            )
        at = bisect_left(addresses, own) if own else len(addresses)
        if at < len(addresses) and addresses[at] == own:
            return addresses[:at] + addresses[at + 1 :]
        return list(addresses)


def desired(state: ClusterState, host: HostId, peers: PeerLists) -> ConfigureNetworks:
    """The whole network configuration ``host`` should have, from the records (through the
    index's leases and forwarding VMs of the host: no visit of every VM placed there)."""
    net = state.net
    endpoints: list[HostEndpoint] = []
    for name in net.forwarding.get(host, ()):
        record = state.vms[name]
        first_ip = record.nics[0].ip if record.nics else ""
        endpoints += [
            HostEndpoint(
                vm=name,
                vm_ip=first_ip,
                vm_port=e.vm_port,
                public_port=e.public_port,
                protocol=e.protocol,
                allow=list(e.allow),
            )
            for e in record.endpoints
            if e.public_port is not None and first_ip
        ]
    host_record = state.hosts.get(host)
    own = host_record.underlay_ip if host_record is not None else ""
    networks = []
    for vnet, leased in sorted(net.leases.get(host, {}).items()):
        ipam = net.ipams.get(vnet)
        record_of = state.vnets.get(vnet)
        if ipam is None or record_of is None:
            continue  # cannot happen: a network with VMs in it is never deleted
        networks.append(
            HostNetwork(
                vnet=vnet,
                vni=record_of.vni,
                cidr=record_of.cidr,
                gateway=ip_text(ipam.gateway),
                peers=peers.of(vnet, own),
                leases=[leased[name] for name in sorted(leased)],
            )
        )
    endpoints.sort(key=lambda e: (e.public_port, e.protocol, e.vm))
    config = ConfigureNetworks(networks=networks, endpoints=endpoints, digest="")
    config.digest = digest_of(config)
    return config


def due(ctx: StepContext, host: HostId, peers: PeerLists) -> list[AgentCommand]:
    """The configuration ``host`` should be sent now (recomputed if its VMs changed), unless
    it reported having applied it: [] or [it]."""
    net, wanted = ctx.state.net, ctx.carry.networks
    config = wanted.get(host)
    if config is None or host in net.dirty_hosts:
        net.dirty_hosts.discard(host)
        config = wanted[host] = desired(ctx.state, host, peers)
    runtime = ctx.state.runtimes.get(host)
    reported = runtime.network_digest if runtime is not None else ""
    return [] if config.digest == reported else [config]


def heartbeat(ctx: StepContext, host: HostId, digest: str) -> None:
    """A heartbeat reported the configuration ``digest`` applied: send the wanted one if it
    differs (``ctx.send`` keeps a repeat to one per ``command_retry_s``).

    A host whose reported digest changed to one that is not wanted lost what it had (its agent
    restarted): the configuration goes at once, and the commands it may have dropped for want
    of it (a start whose network was missing) go again right behind it, in this step."""
    runtime = ctx.state.runtimes.get(host)
    previous = runtime.network_digest if runtime is not None else digest
    if runtime is not None:
        runtime.network_digest = digest
    commands = due(ctx, host, PeerLists(ctx.state))
    if commands and previous != digest:
        ctx.forget_sent(host)
    ctx.send(host, commands)


def flush(ctx: StepContext, *, peers_too: bool) -> None:
    """Send every host whose configuration changed its new one (at the end of a step; with
    ``peers_too``, at a tick, also the hosts of networks whose hosts changed)."""
    net = ctx.state.net
    hosts = set(net.dirty_hosts)
    if peers_too and net.dirty_vnets:
        for vnet in net.dirty_vnets:
            hosts.update(net.hosts_of(vnet))
            net.dirty_hosts.update(net.hosts_of(vnet))
        net.dirty_vnets.clear()
    if not hosts:
        return
    peers = PeerLists(ctx.state)
    for host in sorted(hosts):
        record = ctx.state.hosts.get(host)
        if record is None or not record.up:
            net.dirty_hosts.discard(host)
            ctx.carry.networks.pop(host, None)  # computed again when it is back
            continue
        ctx.send(host, due(ctx, host, peers))
