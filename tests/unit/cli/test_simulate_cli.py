"""``stratus simulate`` answers how many hosts a trace needs, in text or JSON."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import msgspec
import pytest

from cli.main import main
from common.config import SchedulerConfig

SLICE = Path(__file__).resolve().parents[2] / "data" / "azure-2017-slice.csv"


def test_simulate_reports_hosts_in_use_against_the_lower_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["simulate", "--trace", str(SLICE), "--host-size", "16c/64g", "-o", "json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vms"] == 400 and report["rejected"] == 0
    assert report["peak_hosts_in_use"] >= report["peak_lower_bound"] > 0
    assert report["time_averaged_ratio"] >= 1.0


def test_simulate_on_too_few_hosts_says_how_many_were_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv.gz"
    trace.write_bytes(gzip.compress(SLICE.read_bytes()))
    argv = ["simulate", "--trace", str(trace), "--hosts", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 hosts are not enough: ")
    assert "vms rejected" in out


def test_simulate_refuses_an_unknown_trace(tmp_path: Path) -> None:
    trace = tmp_path / "other.csv"
    trace.write_text("a,b,c\n1,2,3\n")
    err = io.StringIO()
    assert main(["simulate", "--trace", str(trace)], stderr=err) == 1
    assert "not an Azure 2017 or Alibaba 2023 trace" in err.getvalue()


def test_simulate_without_flags_replays_the_schedulers_default_configuration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--trace", str(SLICE), "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    defaults = SchedulerConfig()
    assert report["policy"] == defaults.scorer
    assert report["rebalance"] == msgspec.to_builtins(defaults.rebalance)
    assert report["rebalance"]["enabled"] is True
    assert report["migrations"] >= report["vms_migrated"] >= 0
    assert 0 <= report["migrated_fraction"] <= 1


def test_simulate_reads_policy_and_rebalancer_from_a_scheduler_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "scheduler.toml"
    config.write_text('scorer = "spread"\n\n[rebalance]\nenabled = false\n')
    argv = ["simulate", "--trace", str(SLICE), "--config", str(config), "-o", "json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == "spread"
    assert (report["rebalance"]["enabled"], report["migrations"]) == (False, 0)


def test_simulate_without_the_rebalancer_migrates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["simulate", "--trace", str(SLICE), "--no-rebalance", "--policy", "binpack"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "policy         binpack, rebalancer off" in out
    assert "migrations     0 of 0 vms" in out


def test_simulate_refuses_a_bad_rebalancer_knob(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.toml"
    config.write_text("[rebalance]\nempty_below = 2.0\n")
    err = io.StringIO()
    argv = ["simulate", "--trace", str(SLICE), "--config", str(config)]
    assert main(argv, stderr=err) == 1
    assert "empty_below" in err.getvalue()
