"""deploy/*.toml are valid configs and mention every key of their config struct."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from common.config import AgentConfig, SchedulerConfig, load_config

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
EXAMPLES = [("scheduler.toml", SchedulerConfig), ("agent.toml", AgentConfig)]


def test_scheduler_example_loads() -> None:
    config = load_config(SchedulerConfig, str(DEPLOY / "scheduler.toml"), {})
    assert config.dead_after_s >= config.fence_after_s + 1


def test_agent_example_ships_the_production_driver() -> None:
    config = load_config(AgentConfig, str(DEPLOY / "agent.toml"), {})
    assert config.driver == "qemu"


@pytest.mark.parametrize(("name", "kind"), EXAMPLES, ids=["scheduler", "agent"])
def test_example_config_documents_every_key(
    name: str, kind: type[SchedulerConfig] | type[AgentConfig]
) -> None:
    text = (DEPLOY / name).read_text()
    keys = re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE)
    tables = re.findall(r"^#?\s*\[([a-z_]+)\]\s*$", text, flags=re.MULTILINE)
    mentioned = {*keys, *tables}
    fields = {field.name for field in msgspec.structs.fields(kind)}
    assert fields - mentioned == set(), f"{name} lacks keys (set or commented out)"
    assert mentioned - fields == set(), f"{name} mentions keys the config does not have"
