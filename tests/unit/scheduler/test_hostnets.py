"""A host's desired network state and its delivery: level-triggered, coalesced, in order."""

from __future__ import annotations

from common.ids import HostId
from common.messages import CreateVm, StartVm, VmRef
from common.network_messages import (
    AddEndpoint,
    ConfigureNetworks,
    NetworkChange,
    NicRequest,
    UpdateNetworks,
)
from scheduler.core.contract import Action, Mutation, Op, SendCommands
from scheduler.core.hostnets import desired, whole
from tests.unit.scheduler.corekit import CoreKit, commands
from tests.unit.scheduler.netagents import HeldNets, network_commands

ADDRESSES = {"h1": "192.0.2.1", "h2": "192.0.2.2", "h3": "192.0.2.3"}


def kit_with(*hosts: str, **config: object) -> CoreKit:
    kit = CoreKit(**config)
    for i, host in enumerate(hosts):
        kit.heartbeat(host, fault_domain=f"fd-{i}", underlay_ip=ADDRESSES[host])
    kit.vnet("front", "10.1.0.0/24")
    return kit


def configs(actions: list[Action], host: str | None = None) -> list[ConfigureNetworks]:
    return [c for c in commands(actions, host) if isinstance(c, ConfigureNetworks)]


def beat(kit: CoreKit, host: str, digest: str = "") -> list[Action]:
    """A heartbeat of a well-behaved agent that applied ``digest``."""
    return kit.heartbeat(
        host, kit.running_on(host), underlay_ip=ADDRESSES[host], network_digest=digest
    )


def front(name: str) -> CreateVm:
    return CreateVm(name=name, size="ExtraSmall", nics=[NicRequest(vnet="front")])


def test_a_placed_vm_s_host_gets_its_network_ahead_of_the_start_in_one_batch() -> None:
    kit = kit_with("h1")
    kit.create("web-1", nics=[NicRequest(vnet="front")])
    [batch] = [a for a in kit.actions if isinstance(a, SendCommands)]
    first, start = batch.commands
    # The host reported holding nothing: the network comes whole in an update from "".
    assert isinstance(first, UpdateNetworks) and isinstance(start, StartVm)
    assert first.base == "" and first.digest
    [network] = first.added
    assert (network.vnet, network.vni, network.cidr, network.gateway) == (
        "front",
        4096,
        "10.1.0.0/24",
        "10.1.0.1",
    )
    assert [(lease.vm, lease.ip) for lease in network.leases] == [("web-1", "10.1.0.2")]
    assert network.peers == [] and first.digest
    assert [n.vnet for n in start.vm.nics] == ["front"] and start.vm.nics[0].ip == "10.1.0.2"


def test_a_burst_of_placements_sends_one_configuration_per_host() -> None:
    kit = kit_with("h1", "h2")
    tokens = range(1000, 1024)
    actions = kit.step(*(Mutation(Op.CREATE, front(f"vm-{t}"), t) for t in tokens))
    sent = {host: network_commands(actions, host) for host in ("h1", "h2")}
    assert {host: len(found) for host, found in sent.items()} == {"h1": 1, "h2": 1}
    held = HeldNets()
    held.take(actions)
    assert sum(len(held.whole(host).networks[0].leases) for host in sent) == 24
    # Both joined the network in this step: each config names the other already.
    assert held.whole("h1").networks[0].peers == ["192.0.2.2"]
    assert held.whole("h2").networks[0].peers == ["192.0.2.1"]
    assert network_commands(kit.advance(0.2)) == []


def test_hosts_carrying_a_network_learn_a_new_peer_at_the_next_tick() -> None:
    kit = kit_with("h1", "h2")
    kit.create("big-1", "ExtraLarge", nics=[NicRequest(vnet="front")])  # fills one host
    first = kit.vm("big-1").host
    assert first is not None
    kit.create("big-2", "ExtraLarge", nics=[NicRequest(vnet="front")])
    actions = kit.actions
    second = kit.vm("big-2").host
    assert second is not None and second != first
    [joined] = network_commands(actions, second)
    assert isinstance(joined, UpdateNetworks)
    assert joined.added[0].peers == [ADDRESSES[first]]
    assert network_commands(actions, first) == []  # not before the tick
    ticked = kit.advance(0.2)
    # Only the change: one peer more, nothing else of the host's configuration.
    [update] = network_commands(ticked, first)
    assert isinstance(update, UpdateNetworks) and not update.added and not update.removed
    assert update.changed == [NetworkChange(vnet="front", peers_added=[ADDRESSES[second]])]


def test_a_heartbeat_with_another_digest_gets_the_configuration_again_not_every_beat() -> None:
    kit = kit_with("h1", command_retry_s=3.0)
    kit.create("web-1", nics=[NicRequest(vnet="front")])
    held = HeldNets()
    held.take(kit.actions)
    [update] = network_commands(kit.actions, "h1")
    assert isinstance(update, UpdateNetworks)
    assert network_commands(beat(kit, "h1", "")) == []  # sent just now: on its way
    kit.t += 1.0
    assert network_commands(beat(kit, "h1", "")) == []  # sent a second ago: not yet again
    kit.t += 3.0
    # Lost on the way: the whole configuration, the same as the update led to.
    assert configs(beat(kit, "h1", "")) == [held.whole("h1")]
    assert network_commands(beat(kit, "h1", update.digest)) == []


def test_hosts_without_networks_are_sent_nothing() -> None:
    kit = kit_with("h1")
    kit.create("plain")
    actions = kit.actions + beat(kit, "h1") + kit.advance(0.2) + beat(kit, "h1")
    assert configs(actions) == []


def test_a_host_whose_last_vm_leaves_gets_the_empty_configuration() -> None:
    kit = kit_with("h1")
    kit.create("web-1", nics=[NicRequest(vnet="front")])
    held = HeldNets()
    held.take(kit.actions)
    beat(kit, "h1", held.digest("h1"))
    kit.mutate(Op.DELETE, VmRef(name="web-1"))
    actions = kit.actions + kit.heartbeat(
        "h1", [], underlay_ip="192.0.2.1", network_digest=held.digest("h1")
    )
    [update] = network_commands(actions, "h1")
    assert isinstance(update, UpdateNetworks) and update.removed == ["front"]
    held.take(actions)
    assert held.whole("h1") == ConfigureNetworks(digest="")


def test_endpoints_are_in_their_host_s_configuration() -> None:
    kit = kit_with("h1")
    kit.create("web-1", nics=[NicRequest(vnet="front")])
    held = HeldNets()
    held.take(kit.actions)
    kit.mutate(Op.ENDPOINT_ADD, AddEndpoint(vm="web-1", vm_port=22, allow=["198.51.100.0/24"]))
    [update] = network_commands(kit.actions, "h1")
    assert isinstance(update, UpdateNetworks)
    assert not (update.added or update.removed or update.changed or update.endpoints_removed)
    held.take(kit.actions)
    assert held.whole("h1").endpoints == update.endpoints_added
    [endpoint] = update.endpoints_added
    assert (endpoint.vm, endpoint.vm_ip, endpoint.vm_port, endpoint.public_port) == (
        "web-1",
        "10.1.0.2",
        22,
        20000,
    )
    assert endpoint.allow == ["198.51.100.0/24"]


def test_a_host_with_a_new_underlay_address_is_a_new_peer_and_its_endpoints_move() -> None:
    kit = kit_with("h1", "h2")
    held = HeldNets()
    for name in ("a", "b", "c", "d"):
        kit.create(name, "Large", nics=[NicRequest(vnet="front")])  # two per host
        held.take(kit.actions)
    kit.mutate(Op.ENDPOINT_ADD, AddEndpoint(vm="a", vm_port=22))
    held.take(kit.actions)
    held.take(kit.advance(0.2))
    home = kit.vm("a").host
    assert home is not None
    other = "h2" if home == "h1" else "h1"
    actions = kit.heartbeat(home, kit.running_on(home), underlay_ip="198.51.100.7")
    assert kit.vm("a").endpoints[0].address == "198.51.100.7"
    actions += kit.advance(0.2)
    [update] = network_commands(actions, other)
    assert isinstance(update, UpdateNetworks)
    assert update.changed == [
        NetworkChange(vnet="front", peers_added=["198.51.100.7"], peers_removed=[ADDRESSES[home]])
    ]
    held.take(actions)
    assert held.whole(other).networks[0].peers == ["198.51.100.7"]


def test_the_configurations_sent_are_those_computed_from_scratch() -> None:
    kit = kit_with("h1", "h2", "h3")
    for i in range(12):
        kit.create(f"vm-{i}", "ExtraSmall", nics=[NicRequest(vnet="front")])
    kit.mutate(Op.DELETE, VmRef(name="vm-3"))
    kit.mutate(Op.STOP, VmRef(name="vm-5"))
    kit.advance(0.2)
    for host in ("h1", "h2", "h3"):
        beat(kit, host)
    kit.advance(0.2)
    for host in ("h1", "h2", "h3"):
        sent = kit.core.carry.networks.hosts[HostId(host)]
        assert whole(sent, kit.core.carry.networks) == desired(kit.state, HostId(host)), host


def test_an_agent_that_lost_its_networks_gets_them_and_its_starts_again_at_once() -> None:
    """An agent restarted (the fake driver forgets its VMs, the backend its networks): its
    first report says "" where it had applied the configuration. The configuration and the
    start it dropped for want of it go again in that step, not one retry interval later."""
    kit = kit_with("h1", command_retry_s=10.0)
    kit.create("web-1", nics=[NicRequest(vnet="front")])
    [wanted] = network_commands(kit.actions, "h1")
    beat(kit, "h1", wanted.digest)
    kit.t += 3.0  # the old boot silent long enough for the new one to hold the host id
    actions = kit.heartbeat("h1", [], underlay_ip="192.0.2.1", boot_id="boot-2")
    sent = commands(actions, "h1")
    assert [type(c).__name__ for c in sent] == ["ConfigureNetworks", "StartVm"], sent


def test_hosts_joining_in_one_tick_learn_each_other_and_the_others_learn_both() -> None:
    kit = kit_with("h1", "h2", "h3")
    kit.create("big-1", "ExtraLarge", nics=[NicRequest(vnet="front")])  # fills one host
    first = kit.vm("big-1").host
    held = HeldNets()
    held.take(kit.actions)
    tokens = (1000, 1001)
    joined = kit.step(
        *(
            Mutation(
                Op.CREATE,
                CreateVm(name=f"big-{t}", size="ExtraLarge", nics=[NicRequest(vnet="front")]),
                t,
            )
            for t in tokens
        )
    )
    held.take(joined)
    second, third = (kit.vm(f"big-{t}").host for t in tokens)
    assert first is not None and second is not None and third is not None
    ticked = kit.advance(0.2)
    held.take(ticked)
    # The host that carried it gets one change naming both; each newcomer only the other.
    [update] = network_commands(ticked, first)
    assert isinstance(update, UpdateNetworks)
    assert update.changed[0].peers_added == sorted([ADDRESSES[second], ADDRESSES[third]])
    for host, other in ((second, third), (third, second)):
        [update] = network_commands(ticked, host)
        assert isinstance(update, UpdateNetworks)
        assert update.changed[0].peers_added == [ADDRESSES[other]]
    for host in (first, second, third):
        assert held.whole(host).networks[0].peers == sorted(
            ADDRESSES[h] for h in ADDRESSES if h != host
        )
        assert held.whole(host) == desired(kit.state, HostId(host))
