"""Flags, config files, capacity and the execution log format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import AgentConfig
from common.errors import ConfigError
from common.resources import Resources, parse_capacity
from hostagent.__main__ import main, parse_labels
from hostagent.app import make_driver, resolve_settings
from hostagent.drivers.fake import FakeDriver
from hostagent.execlog import ExecEvent, ExecLog, execlog_path
from hostagent.inventory import host_capacity


def test_declared_capacity_wins() -> None:
    assert host_capacity("64c/256g", "2c/4g") == Resources(64000, 262144)


def test_measured_capacity_subtracts_reserved() -> None:
    measured = host_capacity("", "0c/0m")
    assert measured.cpu_milli >= 1000 and measured.mem_mib > 0
    assert host_capacity("", "0c/512m") == measured - Resources(0, 512)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0c/0m", Resources(0, 0)), ("1c/2g", Resources(1000, 2048)), ("0.5c/0g", Resources(500, 0))],
)
def test_parse_reserved(text: str, expected: Resources) -> None:
    assert parse_capacity(text, allow_zero=True) == expected


def test_reserving_everything_is_an_error() -> None:
    with pytest.raises(ConfigError, match="leaves nothing"):
        host_capacity("", "100000c/0m")


def test_parse_labels() -> None:
    assert parse_labels("ssd=yes, gpu=a100,") == {"ssd": "yes", "gpu": "a100"}


def test_settings_from_config() -> None:
    config = AgentConfig(host_id="h1", capacity="4c/8g", cpu_overcommit=2.0)
    settings = resolve_settings(config)
    assert (settings.host_id, settings.capacity) == ("h1", Resources(4000, 8192))
    driver = make_driver(settings)
    assert isinstance(driver, FakeDriver) and driver.cpu_overcommit == 2.0


def test_default_host_id_is_the_hostname() -> None:
    assert resolve_settings(AgentConfig(capacity="1c/1g")).host_id


@pytest.mark.parametrize(
    "argv",
    [
        ["--capacity", "lots"],
        ["--host-id", "bad.id", "--capacity", "1c/1g"],
        ["--heartbeat-interval", "-1", "--capacity", "1c/1g"],
        ["--config", "/nonexistent/agent.toml"],
    ],
    ids=["capacity", "host-id", "interval", "missing-file"],
)
def test_bad_config_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stratus agent: ") and err.count("\n") == 1


def test_unknown_key_in_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('host_id = "h1"\ncapcity = "1c/1g"\n')
    assert main(["--config", str(path)]) == 2
    assert "capcity" in capsys.readouterr().err


def test_execlog_lines(tmp_path: Path) -> None:
    path = execlog_path(tmp_path, "h1")
    log = ExecLog(path, "h1", wall_s=lambda: 1700000000.25)
    log.record("vm-1", 3, ExecEvent.RUNNING)
    log.record("vm-1", 3, ExecEvent.PAUSE)
    lines = path.read_text().splitlines()  # flushed: readable before close
    log.close()
    assert path == tmp_path / "h1" / "executions.jsonl"
    assert json.loads(lines[0]) == {
        "t": 1700000000.25,
        "host": "h1",
        "vm": "vm-1",
        "gen": 3,
        "event": "running",
    }
    assert json.loads(lines[1])["event"] == "pause"
    assert list(json.loads(lines[0])) == ["t", "host", "vm", "gen", "event"]
