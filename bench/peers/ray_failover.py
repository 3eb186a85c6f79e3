"""A peer side by side: Ray's recovery of actors when a node dies, beside Stratus failover.

Runs in its own virtualenv (``bench/peers/setup_ray.sh`` makes ``bench/peers/.venv-ray``):
Ray is never a project dependency, so this script imports nothing from the project.

Four simulated nodes (``ray.cluster_utils.Cluster``) with 50 slots each of a custom resource,
100 actors of one slot each, spread over the nodes, with ``max_restarts=-1``, so a dead node's
actors fit elsewhere; the node holding the most actors is the one killed.
One worker node is killed the hard way (SIGKILL of its raylet and every process under it;
``remove_node`` alone leaves the actor processes answering), and each of its actors is pinged
until it answers from another node: the time from the kill to that answer, per actor. Once with
Ray's default health checks, once tuned (every 0.5 s, dead after 3 misses). The Stratus figure
beside it is read from ``bench/results/failover.json`` (``python -m bench.failover``).

    bash bench/peers/setup_ray.sh
    bench/peers/.venv-ray/bin/python bench/peers/ray_failover.py [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# Ray reports usage statistics to its makers' server unless told not to; this benchmark talks
# to nothing but this machine.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import psutil
import ray
from ray import ray_constants
from ray.cluster_utils import Cluster

RESULTS = Path(os.environ.get("STRATUS_BENCH_RESULTS") or Path(__file__).parents[1] / "results")
LOOPBACK = "127.0.0.1"
SETTINGS: dict[str, dict[str, int]] = {
    "default": {},
    "tuned": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
}


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Pinger:
    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _kill_node(node: Any) -> None:
    """SIGKILL the node's raylet and every process under it (workers, actors)."""
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    procs = [psutil.Process(raylet)]
    procs += procs[0].children(recursive=True)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


def one_run(label: str, actors: int, nodes: int, timeout_s: float) -> dict[str, Any]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "_system_config": dict(SETTINGS[label]),  # Ray edits it
            # Every Ray server and worker on loopback: by default Ray picks the machine's own
            # network interface, and the benchmark must talk to nothing but this machine.
            "node_ip_address": LOOPBACK,
            "include_dashboard": False,
        },
    )
    try:
        workers = [
            cluster.add_node(num_cpus=1, resources={"slot": 50}, node_ip_address=LOOPBACK)
            for _ in range(nodes)
        ]
        ray.init(address=cluster.address, log_to_driver=False, _node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        spread = {"resources": {"slot": 1}, "scheduling_strategy": "SPREAD"}
        pingers = [Pinger.options(**spread).remote() for _ in range(actors)]
        where = ray.get([p.node.remote() for p in pingers], timeout=timeout_s)
        victim = max(workers, key=lambda node: where.count(node.node_id))
        mine = [p for p, node in zip(pingers, where, strict=True) if node == victim.node_id]
        killed_at = time.monotonic()
        _kill_node(victim)
        pending = {p.node.remote(): p for p in mine}
        recovered_s: list[float] = []
        moved_to_other_nodes = True
        deadline = killed_at + timeout_s
        while pending and time.monotonic() < deadline:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                pending.pop(ref)
                recovered_s.append(time.monotonic() - killed_at)
                moved_to_other_nodes &= ray.get(ref) != victim.node_id
        return {
            "health_checks": SETTINGS[label] or "ray defaults (period 3 s, 5 misses)",
            "actors": actors,
            "actors_on_killed_node": len(mine),
            "recovered": len(recovered_s),
            "moved_to_other_nodes": moved_to_other_nodes,
            "p50_s": round(_percentile(recovered_s, 0.5), 3),
            "p99_s": round(_percentile(recovered_s, 0.99), 3),
            "max_s": round(max(recovered_s, default=0.0), 3),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actors", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="8 actors on 2 nodes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.actors, args.nodes = 8, 2
    load = [round(x, 2) for x in os.getloadavg()]
    runs = {label: one_run(label, args.actors, args.nodes, 180.0) for label in SETTINGS}
    ours_path = RESULTS / "failover.json"
    ours: dict[str, Any] | None = None
    if ours_path.exists():
        kinds = json.loads(ours_path.read_text())["kinds"]["kill -9"]
        ours = {"p50_s": kinds["p50_s"], "p99_s": kinds["p99_s"], "source": "failover.json"}
        for run in runs.values():
            run["ratio_p50_ray_over_stratus"] = round(run["p50_s"] / ours["p50_s"], 2)
            run["ratio_p99_ray_over_stratus"] = round(run["p99_s"] / ours["p99_s"], 2)
    name = "ray_failover-smoke" if args.smoke else "ray_failover"
    body = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load},
        "ray": ray.__version__,
        "nodes": args.nodes,
        "runs": runs,
        "stratus_kill_9": ours,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")
    for label, run in runs.items():
        print(
            f"ray {label:8} {run['recovered']}/{run['actors_on_killed_node']} actors back: "
            f"p50 {run['p50_s']} s  p99 {run['p99_s']} s  max {run['max_s']} s"
        )
    if ours is not None:
        print(f"stratus kill -9: p50 {ours['p50_s']} s  p99 {ours['p99_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
