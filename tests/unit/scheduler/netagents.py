"""Hosts' network configurations as the scheduler's commands leave them: a model of the agent
side made of the parts the agents use (common/netconfig.py, and the simulated backend), for tests
of the pure core. An update whose base a host does not hold is ignored, as an agent does."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from common.errors import NetworkError
from common.netconfig import NetConfig
from common.network_messages import ConfigureNetworks, UpdateNetworks
from hostagent.netsim import SimulatedNetwork
from scheduler.core.contract import Action, SendCommands

NetworkCommand = ConfigureNetworks | UpdateNetworks


def done(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never waits (the simulated backend's) to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("the coroutine waited")


def network_commands(actions: list[Action], host: str | None = None) -> list[NetworkCommand]:
    return [
        c
        for a in actions
        if isinstance(a, SendCommands) and (host is None or a.host_id == host)
        for c in a.commands
        if isinstance(c, ConfigureNetworks | UpdateNetworks)
    ]


class HeldNets:
    def __init__(self) -> None:
        self.configs: dict[str, NetConfig] = {}
        self.backends: dict[str, SimulatedNetwork] = {}
        self.ignored = 0
        """Updates a host did not hold the base of."""

    def digest(self, host: str) -> str:
        config = self.configs.get(host)
        return config.digest if config is not None else ""

    def whole(self, host: str) -> ConfigureNetworks:
        return self.configs.get(host, NetConfig()).whole()

    def take(self, actions: list[Action], host: str | None = None) -> None:
        for action in actions:
            if isinstance(action, SendCommands) and (host is None or action.host_id == host):
                for command in network_commands([action]):
                    self.receive(action.host_id, command)

    def receive(self, host: str, command: NetworkCommand) -> None:
        """What the agent does, checked against the simulated backend doing it too."""
        backend = self.backends.setdefault(host, SimulatedNetwork())
        if isinstance(command, ConfigureNetworks):
            config = NetConfig.of(command)
            assert config.digest == command.digest  # the same digest whole and by changes
            self.configs[host] = config
            done(backend.apply(command))
        else:
            config = self.configs.setdefault(host, NetConfig())
            if command.base != config.digest:
                self.ignored += 1
                try:
                    done(backend.update(command))
                except NetworkError:
                    pass  # refused as well
                else:
                    raise AssertionError("the backend applied an update on another base")
                return
            assert config.problem(command) is None, config.problem(command)
            config.apply(command)
            assert config.digest == command.digest
            done(backend.update(command))
        assert backend.applied_digest == config.digest
        assert backend.networks == {n.vni: n for n in config.whole().networks}

    def restart(self, host: str) -> None:
        """The agent lost what it held."""
        self.configs.pop(host, None)
        self.backends.pop(host, None)
