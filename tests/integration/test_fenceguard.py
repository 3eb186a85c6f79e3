"""The fence guard as a process: one per host, detached; with real QEMU and real agents, it
pauses the VMs of a kill -9'd agent before the scheduler starts them elsewhere."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.client import StratusClient
from common.messages import CreateVm
from hostagent.drivers.qmp import QmpClient
from hostagent.fenceguard import ensure_guard, guard_pid
from rigs.cluster import Cluster, overlapping_executions
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.test_qemu import (
    BOOT_S,
    TINY,
    alive,
    kill,
    qemu_pid,
    qemu_pids,
    start_qemu_agent,
    vm_dir,
)
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration]


def kill_guards(agents_dir: Path) -> None:
    for path in agents_dir.glob("*/fenceguard.pid"):
        pid = guard_pid(agents_dir, path.parent.name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_one_guard_per_host_it_survives_its_starter_and_leaves_when_idle(
    tmp_path: Path,
) -> None:
    pid = ensure_guard(tmp_path, "h1")
    try:
        assert ensure_guard(tmp_path, "h1") == pid, "a live guard is reused"
        assert guard_pid(tmp_path, "h1") == pid
        assert os.getsid(pid) == pid, "in its own session: it outlives the agent"
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: guard_pid(tmp_path, "h1") is None, message="guard gone")
        again = ensure_guard(tmp_path, "h1")
        assert again != pid, "a dead guard is replaced"
        # With no agent and no VM on the host, it has nothing to guard and exits by itself.
        await wait_until(lambda: guard_pid(tmp_path, "h1") is None, timeout_s=30)
    finally:
        kill_guards(tmp_path)


@pytest.fixture
def guarded_cluster(cluster: Cluster) -> Iterator[Cluster]:
    kit = boot_kit()
    config = cluster.workdir / "scheduler.toml"
    config.write_text(
        f'sizes = [{{ name = "{TINY}", cpu_milli = 1000, mem_mib = 96 }}]\n'
        f'builtin_images = {{ tiny = "{kit / "tiny.qcow2"}" }}\n'
    )
    # dead_after_s leaves an agent restart time to come back before its host is declared dead.
    cluster.timings = {"heartbeat_interval_s": 0.2, "fence_after_s": 0.8, "dead_after_s": 5.0}
    cluster.start_scheduler("--config", str(config))
    try:
        yield cluster
    finally:
        cluster.stop()
        for pid in qemu_pids(cluster.workdir):
            kill(pid)
        kill_guards(cluster.workdir / "agents")


async def qmp_status(path: Path) -> str:
    qmp = await QmpClient.connect(path)
    try:
        return await qmp.query_status()
    finally:
        await qmp.close()


def events(cluster: Cluster, host: str, event: str) -> list[tuple[object, object]]:
    """(vm, generation) of each ``event`` in ``host``'s audit log."""
    rows = cluster.execution_log()
    return [(r["vm"], r["gen"]) for r in rows if (r["host"], r["event"]) == (host, event)]


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_a_dead_agents_vm_is_paused_by_the_guard_before_it_runs_elsewhere(
    guarded_cluster: Cluster, client: StratusClient
) -> None:
    cluster, kit = guarded_cluster, boot_kit()
    start_qemu_agent(cluster, kit, "h1")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="vm-g", size=TINY))
    await wait_all_running(client, ["vm-g"], timeout_s=BOOT_S)
    agents = cluster.workdir / "agents"
    guard = guard_pid(agents, "h1")
    pid = qemu_pid(cluster, "h1", "vm-g")
    assert guard is not None and pid is not None

    # A short crash: the guard pauses the guest; the new agent adopts it paused and the
    # scheduler, still counting the host alive, has it resumed in place.
    cluster.kill_agent("h1")
    await wait_until(lambda: events(cluster, "h1", "pause") == [("vm-g", 1)], message="fenced")
    start_qemu_agent(cluster, kit, "h1")
    await wait_until(lambda: events(cluster, "h1", "resume") == [("vm-g", 1)], timeout_s=30)
    assert guard_pid(agents, "h1") == guard, "the restarted agent reused the live guard"

    # A long one: the scheduler starts the VM elsewhere, and the old copy is paused meanwhile.
    start_qemu_agent(cluster, kit, "h2")
    await wait_hosts_up(client, 2)
    killed_at = time.time()
    cluster.kill_agent("h1")  # the agent dies; its guest and its guard live on
    vm = (await wait_all_running(client, ["vm-g"], timeout_s=BOOT_S, avoid_host="h1"))["vm-g"]
    assert vm.host == "h2" and vm.generation > 1

    rows = cluster.execution_log()
    assert overlapping_executions(rows, killed={}) == [], "the guest outlived its agent"
    pause = [r for r in rows if (r["host"], r["event"]) == ("h1", "pause")][-1]
    [running] = [r for r in rows if (r["host"], r["event"]) == ("h2", "running")]
    assert (pause["vm"], pause["gen"]) == ("vm-g", 1)
    assert killed_at < float(pause["t"]) < float(running["t"])  # type: ignore[arg-type]
    latency_s = float(pause["t"]) - killed_at  # type: ignore[arg-type]
    print(f"fence latency (agent kill -> guard pause): {latency_s:.3f}s")
    assert "vm fenced vm=vm-g" in (agents / "h1" / "fenceguard.log").read_text()
    assert alive(pid), "paused, never destroyed"
    assert await qmp_status(vm_dir(cluster, "h1", "vm-g") / "qmp.sock") == "paused"

    start_qemu_agent(cluster, kit, "h1")  # back: it adopts the paused stale copy, told to drop it
    await wait_until(lambda: events(cluster, "h1", "destroy") != [], timeout_s=30)
    assert events(cluster, "h1", "destroy") == [("vm-g", 1)]
    await wait_until(lambda: not alive(pid), message="old qemu gone")
    assert overlapping_executions(cluster.execution_log(), killed={}) == []
