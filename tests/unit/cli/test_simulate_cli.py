"""``stratus simulate`` answers how many hosts a trace needs, in text or JSON."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from cli.main import main

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
    argv = ["simulate", "--trace", str(trace), "--hosts", "2", "--consolidate", "300"]
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
