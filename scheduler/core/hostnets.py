"""A host's desired network state, and its delivery as changes (level-triggered). Pure.

What a host should have is a function of the records: the networks of the NICs of the VMs
placed on it, each with its peers (the underlay addresses of the other up hosts carrying it;
hosts without one left out) and the DHCP leases of its VMs in it, plus the endpoints of its VMs.
Its digest is the sum of per-item hashes (common/netconfig.py): "" for the empty configuration,
which is what an agent that applied nothing reports (a host without networks is sent nothing).

The scheduler keeps what it last sent each host (``Carry.networks``, a ``HostWant``: networks,
leases and endpoints by name) and each network's peers once (a ``PeerSet``: every host carrying
the network has those less its own address). It sends:

- ``ConfigureNetworks``, the whole, to a host it has no account for (first network, scheduler
  restarted, host back up or moved) and to a host that reports a digest it did not lead it to
  (its agent restarted, or lost or refused an update);
- else ``UpdateNetworks`` from the digest last sent to the new one, with what changed:
  - a host whose own VMs' NICs or endpoints changed (``NetIndex.dirty_hosts``; the VMs in
    ``NetIndex.touched``) gets their leases and endpoints, and a network it gains whole, in the
    same step: ahead of the ``StartVm`` that needs it, in one batch, when it gets starts
    (``due``), else at the end of the step (``flush``); a burst of placements sends one update
    per host, each O(the VMs that changed there);
  - a network whose set of hosts changed (``NetIndex.dirty_vnets``) has its peer set computed
    again at the next tick, once, and every host carrying it gets the peers added and removed
    (its own address left out), coalesced per host;
- a heartbeat whose ``network_digest`` is one an update leads through, and not one before what
  the host reported last, waits for the rest (the updates are on their way); after
  ``command_retry_s`` without it, the whole goes.

Nothing here scans every host or VM: membership counts are kept by the index as records change.
"""

from __future__ import annotations

from msgspec.structs import replace

from common.ids import HostId, VmName
from common.messages import AgentCommand
from common.netconfig import NetConfig, endpoint_key
from common.network_messages import (
    ConfigureNetworks,
    EndpointProtocol,
    EndpointRef,
    HostEndpoint,
    HostNetwork,
    NetworkChange,
    NicLease,
    UpdateNetworks,
)
from scheduler.core.context import NETWORKS_KEY, StepContext
from scheduler.core.netwants import HostWant, NetWants, PeerSet
from scheduler.state.cluster import ClusterState
from scheduler.state.ipam import ip_text
from scheduler.state.model import HostRuntime


def peer_set(state: ClusterState, wants: NetWants, vnet: str) -> PeerSet:
    """The peers of ``vnet`` as given to its hosts (computed now if none were yet)."""
    known = wants.peers.get(vnet)
    if known is None:
        known = wants.peers[vnet] = PeerSet.of(vnet, _addresses(state, vnet))
    return known


def _addresses(state: ClusterState, vnet: str) -> frozenset[str]:
    hosts = state.hosts
    return frozenset(
        record.underlay_ip
        for host in state.net.hosts_of(vnet)
        if (record := hosts.get(host)) is not None and record.up and record.underlay_ip
    )


def _network(
    state: ClusterState, wants: NetWants, vnet: str, leased: dict[VmName, NicLease], own: str
) -> HostNetwork | None:
    """``vnet`` as a host at ``own`` with ``leased`` has it, its peers included."""
    ipam = state.net.ipams.get(vnet)
    record = state.vnets.get(vnet)
    if ipam is None or record is None:
        return None  # cannot happen: a network with VMs in it is never deleted
    return HostNetwork(
        vnet=vnet,
        vni=record.vni,
        cidr=record.cidr,
        gateway=ip_text(ipam.gateway),
        peers=peer_set(state, wants, vnet).for_host(own),
        leases=[leased[name] for name in sorted(leased)],
    )


def endpoints_of(state: ClusterState, name: VmName) -> list[HostEndpoint]:
    """The port forwards of VM ``name`` on its host."""
    record = state.vms.get(name)
    if record is None or not record.nics or not record.nics[0].ip:
        return []
    first_ip = record.nics[0].ip
    return [
        HostEndpoint(
            vm=name,
            vm_ip=first_ip,
            vm_port=e.vm_port,
            public_port=e.public_port,
            protocol=e.protocol,
            allow=list(e.allow),
        )
        for e in record.endpoints
        if e.public_port is not None
    ]


def build(state: ClusterState, host: HostId, wants: NetWants) -> HostWant:
    """The whole configuration ``host`` should have, from the index (its leases and forwarding
    VMs: no visit of every VM placed there)."""
    record = state.hosts.get(host)
    own = record.underlay_ip if record is not None else ""
    config = NetConfig(keep_peers=False)
    for vnet, leased in sorted(state.net.leases.get(host, {}).items()):
        network = _network(state, wants, vnet, leased, own)
        if network is not None:
            config.add_network(network)
    for name in state.net.forwarding.get(host, ()):
        for endpoint in endpoints_of(state, name):
            config.add_endpoint(endpoint)
    want = HostWant(config, own)
    want.passed(want.reckon(wants.peers))
    return want


def whole(want: HostWant, wants: NetWants) -> ConfigureNetworks:
    """The whole configuration of ``want``, its peers filled in."""
    config = want.config.whole(want.digest)
    nobody = PeerSet(frozenset(), 0)
    config.networks = [
        replace(n, peers=wants.peers.get(n.vnet, nobody).for_host(want.own))
        for n in config.networks
    ]
    return config


def desired(state: ClusterState, host: HostId) -> ConfigureNetworks:
    """What ``host`` should have from the records now (its networks' peers as they are now)."""
    wants = NetWants()
    return whole(build(state, host, wants), wants)


def _lease_changes(
    config: NetConfig, now: dict[str, dict[VmName, NicLease]], touched: list[VmName]
) -> list[NetworkChange]:
    changed = []
    for vnet in sorted(config.heads):
        held, wanted = config.leases[vnet], now.get(vnet)
        if wanted is None:
            continue  # the network goes whole
        gone: list[str] = [vm for vm in touched if vm in held and held[vm] != wanted.get(vm)]
        come = [wanted[vm] for vm in touched if vm in wanted and wanted[vm] != held.get(vm)]
        if gone or come:
            changed.append(NetworkChange(vnet=vnet, leases_added=come, leases_removed=gone))
    return changed


def _endpoint_changes(
    state: ClusterState, host: HostId, config: NetConfig, touched: list[VmName]
) -> tuple[list[HostEndpoint], list[EndpointRef]]:
    forwarding = state.net.forwarding.get(host, set())
    added: list[HostEndpoint] = []
    removed: list[EndpointRef] = []
    if not forwarding and not config.by_vm:
        return added, removed  # no endpoint there, before or now (most hosts)
    for vm in touched:
        old = {key: config.endpoints[key] for key in config.by_vm.get(vm, ())}
        new = {endpoint_key(e): e for e in (endpoints_of(state, vm) if vm in forwarding else [])}
        removed += [
            EndpointRef(public_port=key[1], protocol=EndpointProtocol(key[0]))
            for key, e in sorted(old.items())
            if new.get(key) != e
        ]
        added += [e for key, e in sorted(new.items()) if old.get(key) != e]
    return added, removed


def _update(ctx: StepContext, host: HostId, want: HostWant) -> UpdateNetworks | None:
    """What changed in ``host``'s configuration through its touched VMs (None: nothing),
    applied to ``want``. O(the touched VMs and the host's networks)."""
    state, wants = ctx.state, ctx.carry.networks
    touched = sorted(state.net.touched.pop(host, ()))
    now = state.net.leases.get(host, {})
    config = want.config
    added = [
        network
        for vnet in sorted(now.keys() - config.heads.keys())
        if (network := _network(state, wants, vnet, now[vnet], want.own)) is not None
    ]
    removed = sorted(config.heads.keys() - now.keys())
    changed = _lease_changes(config, now, touched)
    endpoints_added, endpoints_removed = _endpoint_changes(state, host, config, touched)
    if not (added or removed or changed or endpoints_added or endpoints_removed):
        return None
    update = UpdateNetworks(
        base=want.digest,
        digest="",
        added=added,
        removed=removed,
        changed=changed,
        endpoints_added=endpoints_added,
        endpoints_removed=endpoints_removed,
    )
    config.apply(update)  # the peers of added networks are the PeerSet's, not kept here
    update.digest = want.reckon(wants.peers)
    want.passed(update.digest)
    return update


def due(ctx: StepContext, host: HostId) -> list[AgentCommand]:
    """What ``host`` should be sent now about its networks: the whole configuration if there is
    no account of what it has (unless it reports having it), the changes if its VMs' changed,
    else nothing: [] or [it]."""
    state, wants = ctx.state, ctx.carry.networks
    record = state.hosts.get(host)
    own = record.underlay_ip if record is not None else ""
    want = wants.hosts.get(host)
    if want is None or want.own != own:
        state.net.dirty_hosts.discard(host)
        state.net.touched.pop(host, None)
        want = wants.hosts[host] = build(state, host, wants)
        return [] if want.digest == _reported(ctx, host) else [whole(want, wants)]
    if host in state.net.dirty_hosts:
        state.net.dirty_hosts.discard(host)
        update = _update(ctx, host, want)
        if update is not None:
            return [update]
    return []


def _reported(ctx: StepContext, host: HostId) -> str:
    runtime = ctx.state.runtimes.get(host)
    return runtime.network_digest if runtime is not None else ""


def _retry_due(ctx: StepContext, host: HostId) -> bool:
    last = ctx.carry.sent.get(host, {}).get(NETWORKS_KEY)
    return last is None or ctx.now.mono_s - last[1] >= ctx.config.command_retry_s


def heartbeat(ctx: StepContext, host: HostId, digest: str, runtime: HostRuntime | None) -> None:
    """A heartbeat reported the configuration ``digest`` applied: send the wanted one if it
    differs and no update on the way leads there (``ctx.send`` keeps a repeat of the whole to
    one per ``command_retry_s``).

    A host whose reported digest changed to one no update led to lost what it had (its agent
    restarted): the whole configuration goes at once, and the commands it may have dropped for
    want of it (a start whose network was missing) go again right behind it, in this step.
    ``runtime``: the host's (the caller holds it; None if it has none)."""
    previous = runtime.network_digest if runtime is not None else digest
    if runtime is not None:
        runtime.network_digest = digest
    wants = ctx.carry.networks
    want = wants.hosts.get(host)
    if want is None or host in ctx.state.net.dirty_hosts:
        commands = due(ctx, host)
    elif want.reached(digest) and (digest == want.digest or not _retry_due(ctx, host)):
        return
    else:
        want.recent.clear()
        want.passed(want.digest)
        commands = [whole(want, wants)]
    if commands and previous != digest and isinstance(commands[0], ConfigureNetworks):
        ctx.forget_sent(host)
    ctx.send(host, commands)


def flush(ctx: StepContext, *, peers_too: bool) -> None:
    """Send every host whose VMs' networks changed the changes (at the end of a step; with
    ``peers_too``, at a tick, also the peers of networks whose hosts changed)."""
    state, wants = ctx.state, ctx.carry.networks
    net = state.net
    for host in sorted(net.dirty_hosts):
        record = state.hosts.get(host)
        if record is None or not record.up:
            net.dirty_hosts.discard(host)
            net.touched.pop(host, None)
            wants.hosts.pop(host, None)  # computed again when it is back
            continue
        ctx.send(host, due(ctx, host))
    if peers_too and net.dirty_vnets:
        _send_peers(ctx)


def _peer_changes(state: ClusterState, wants: NetWants, vnet: str) -> dict[HostId, NetworkChange]:
    """``vnet``'s peer set computed again (once) and, per host carrying it, what changed."""
    old = wants.peers.get(vnet)
    if not state.net.members.get(vnet):
        wants.peers.pop(vnet, None)
        return {}
    now = _addresses(state, vnet)
    if old is None or old.addresses == now:
        wants.peers[vnet] = old or PeerSet.of(vnet, now)
        return {}
    wants.peers[vnet] = PeerSet.of(vnet, now)
    come, gone = now - old.addresses, old.addresses - now
    added, removed = sorted(come), sorted(gone)
    shared = NetworkChange(vnet=vnet, peers_added=added, peers_removed=removed)
    changes = {}
    for host in state.net.hosts_of(vnet):
        want = wants.hosts.get(host)
        if want is None or vnet not in want.config.heads:
            continue
        own = want.own
        if own not in come and own not in gone:
            changes[host] = shared  # one change for all: its lists are never changed
            continue
        change = NetworkChange(
            vnet=vnet,
            peers_added=[a for a in added if a != own],
            peers_removed=[a for a in removed if a != own],
        )
        if change.peers_added or change.peers_removed:
            changes[host] = change
    return changes


def _send_peers(ctx: StepContext) -> None:
    state, wants = ctx.state, ctx.carry.networks
    per_host: dict[HostId, list[NetworkChange]] = {}
    for vnet in sorted(state.net.dirty_vnets):
        for host, change in _peer_changes(state, wants, vnet).items():
            per_host.setdefault(host, []).append(change)
    state.net.dirty_vnets.clear()
    for host, changed in sorted(per_host.items()):
        want = wants.hosts[host]
        base = want.digest
        digest = want.reckon(wants.peers)
        want.passed(digest)
        ctx.send(host, [UpdateNetworks(base=base, digest=digest, changed=changed)])
