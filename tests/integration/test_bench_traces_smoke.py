"""The decision-core and real-trace benchmarks run in their tiny sizes (no timing asserted)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench import placement, traces

SLICE = Path(__file__).resolve().parents[1] / "data" / "azure-2017-slice.csv"
ALIBABA_HOSTS = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,0,\nn1,16000,65536,0,\n"
ALIBABA_PODS = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
    "p0,8000,16384,0,0,,LS,Running,0,100,0\n"
    "p1,16000,32768,0,0,,LS,Running,10,200,10\n"
    "p2,64000,1024,0,0,,LS,Pending,20,300,\n"
)


def _result(tmp_path: Path, name: str) -> dict[str, object]:
    body: dict[str, object] = json.loads((tmp_path / f"{name}-smoke.json").read_text())
    return body


def test_placement_smoke_agrees_with_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATUS_BENCH_RESULTS", str(tmp_path))
    assert placement.main(["--smoke"]) == 0
    result = _result(tmp_path, "placement")
    policies = result["policies"]
    assert result["networks"] == 4  # every VM on a network, by default
    assert isinstance(policies, dict) and set(policies) == {"binpack", "spread"}
    for body in policies.values():
        assert body["indexed"]["decisions"] == 500 and body["indexed"]["rejected"] == 0
        assert body["indexed"]["addresses_held"] == 500
        assert body["reference_place"]["same_choices_as_index"] is True


def test_traces_smoke_replays_both_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workloads = tmp_path / "workloads"
    (workloads / "azure-2017").mkdir(parents=True)
    (workloads / "alibaba-2023").mkdir()
    gz = workloads / "azure-2017" / "azure_v1_dev_vms.csv.gz"
    gz.write_bytes(gzip.compress(SLICE.read_bytes()))
    (workloads / "alibaba-2023" / "openb_node_list_all_node.csv").write_text(ALIBABA_HOSTS)
    (workloads / "alibaba-2023" / "openb_pod_list_default.csv").write_text(ALIBABA_PODS)
    monkeypatch.setenv("STRATUS_BENCH_RESULTS", str(tmp_path))
    assert traces.main(["--smoke", "--workloads", str(workloads)]) == 0
    result = _result(tmp_path, "traces")
    azure = result["azure_2017"]
    assert isinstance(azure, dict) and set(azure) == {"64c/256g", "16c/64g"}
    for size in azure.values():
        assert size["open_fleet"]["binpack"]["placed"] == 400
        assert size["open_fleet"]["default"]["time_averaged_ratio"] >= 1.0
        assert size["open_fleet"]["binpack"]["migrations"] == 0
    alibaba = result["alibaba_2023"]
    assert isinstance(alibaba, dict)
    assert (alibaba["binpack"]["placed"], alibaba["binpack"]["rejected"]) == (2, 1)
