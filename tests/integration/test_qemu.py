"""End to end with real QEMU (TCG): the scheduler and qemu host agents as processes.

Guests are the tiny image (96 MiB, ~2.5 s to boot): its init counts boots on the OS disk and
prints ``STRATUS-READY ... boot_count=N first_vm=NAME disks=...`` on the serial console, which is
how these tests read back what a guest wrote. Skipped without QEMU (with the apt line to run);
``STRATUS_REQUIRE_QEMU=1`` makes them fail instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from cli.client import StratusClient
from common import codec, subjects
from common.errors import ApiError
from common.image_messages import ImageState
from common.messages import CaptureVm, CreateVm, DiskKind, VmEvent, VmInfo, VmState
from rigs.cluster import Cluster
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.proxy import CuttableProxy
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(180)]

TINY = "Tiny"
BOOT_S = 60.0
"""Generous: a boot takes ~2.5 s alone, more while other tests load the machine."""


@pytest.fixture(scope="module")
def kit() -> Path:
    return boot_kit()


@contextlib.contextmanager
def qemu_scheduler(cluster: Cluster, kit: Path) -> Iterator[Cluster]:
    config = cluster.workdir / "scheduler.toml"
    config.write_text(
        f'sizes = [{{ name = "{TINY}", cpu_milli = 1000, mem_mib = 96 }}]\n'
        f'builtin_images = {{ tiny = "{kit / "tiny.qcow2"}" }}\n'
    )
    cluster.start_scheduler("--config", str(config))
    try:
        yield cluster
    finally:
        cluster.stop()
        for pid in qemu_pids(cluster.workdir):  # a failed test may leave guests running
            kill(pid)


@pytest.fixture
def qemu_cluster(cluster: Cluster, kit: Path) -> Iterator[Cluster]:
    with qemu_scheduler(cluster, kit):
        yield cluster


@pytest.fixture
def patient_qemu_cluster(cluster: Cluster, kit: Path) -> Iterator[Cluster]:
    """A scheduler that declares a host dead only after 20 s of silence: an agent restart
    (exit, a new interpreter's imports, adoption) takes longer than the fast 1.8 s on a loaded
    machine, and a host declared dead has its VMs started again under a new generation."""
    cluster.timings = {"heartbeat_interval_s": 0.2, "fence_after_s": 0.8, "dead_after_s": 20.0}
    with qemu_scheduler(cluster, kit):
        yield cluster


def start_qemu_agent(
    cluster: Cluster, kit: Path, host: str, *, nats_url: str | None = None, boots: int = 2
) -> None:
    cluster.start_agent(
        host,
        capacity="4c/4g",
        fault_domain=f"fd-{host}",
        nats_url=nats_url,
        extra=(
            *("--driver", "qemu", "--boot-dir", str(kit), "--accel", "tcg"),
            *("--max-concurrent-boots", str(boots)),
        ),
    )


def vm_dir(cluster: Cluster, host: str, name: str) -> Path:
    return cluster.workdir / "agents" / host / "qemu" / "vms" / name


def serial(cluster: Cluster, host: str, name: str) -> str:
    path = vm_dir(cluster, host, name) / "serial.log"
    return path.read_text(errors="replace") if path.exists() else ""


def ready_line(cluster: Cluster, host: str, name: str) -> dict[str, str]:
    """The fields of the guest's last readiness line (boot_count, first_vm, disks)."""
    lines = [line for line in serial(cluster, host, name).splitlines() if "STRATUS-READY" in line]
    return dict(re.findall(r"(\w+)=(\S*)", lines[-1])) if lines else {}


def qemu_pid(cluster: Cluster, host: str, name: str) -> int | None:
    path = vm_dir(cluster, host, name) / "qemu.pid"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def qemu_pids(workdir: Path) -> list[int]:
    pids = []
    for path in (workdir / "agents").glob("*/qemu/vms/*/qemu.pid"):
        try:
            pids.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def wait_state(
    client: StratusClient, name: str, state: VmState, timeout_s: float = BOOT_S
) -> VmInfo:
    seen: list[VmInfo] = []

    async def reached() -> bool:
        seen[:] = [await client.get_vm(name)]
        return seen[0].state is state

    await wait_until(reached, timeout_s=timeout_s, message=f"{name} {state} (last: {seen})")
    return seen[0]


async def test_boot_stop_start_keeps_disks_and_delete_removes_them(
    qemu_cluster: Cluster, kit: Path, client: StratusClient
) -> None:
    start_qemu_agent(qemu_cluster, kit, "h1")
    await wait_hosts_up(client, 1)
    [host] = await client.list_hosts()
    assert host.driver == "qemu/tcg"

    await client.create_vm(CreateVm(name="vm-a", size=TINY, data_disks_mib=[256]))
    vm = (await wait_all_running(client, ["vm-a"], timeout_s=BOOT_S))["vm-a"]
    assert ready_line(qemu_cluster, "h1", "vm-a")["boot_count"] == "1"
    assert ready_line(qemu_cluster, "h1", "vm-a")["disks"] == "vda:64M,vdb:256M"
    assert [(d.kind, d.host) for d in vm.disks] == [(DiskKind.OS, "h1"), (DiskKind.DATA, "h1")]

    await client.stop_vm("vm-a")
    await wait_state(client, "vm-a", VmState.STOPPED)
    assert "STRATUS-POWEROFF" in serial(qemu_cluster, "h1", "vm-a"), "graceful ACPI power-off"
    await client.start_vm("vm-a")
    vm = await wait_state(client, "vm-a", VmState.RUNNING)
    assert vm.host == "h1"
    await wait_until(
        lambda: ready_line(qemu_cluster, "h1", "vm-a").get("boot_count") == "2", timeout_s=BOOT_S
    )

    disk_files = list((qemu_cluster.workdir / "agents" / "h1" / "qemu" / "disks").iterdir())
    assert {p.stem for p in disk_files} == {d.disk_id for d in vm.disks}
    await client.delete_vm("vm-a")
    await wait_state(client, "vm-a", VmState.DELETED)
    await wait_until(lambda: not any(p.exists() for p in disk_files), message="disks removed")


async def test_agent_restart_adopts_and_a_killed_qemu_is_restarted(
    patient_qemu_cluster: Cluster, kit: Path, client: StratusClient
) -> None:
    qemu_cluster = patient_qemu_cluster
    start_qemu_agent(qemu_cluster, kit, "h1")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="vm-r", size=TINY))
    before = (await wait_all_running(client, ["vm-r"], timeout_s=BOOT_S))["vm-r"]
    pid = qemu_pid(qemu_cluster, "h1", "vm-r")
    assert pid is not None

    agent = qemu_cluster.agents.pop("h1")  # the agent restarts ...
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=15) == 0
    start_qemu_agent(qemu_cluster, kit, "h1")
    log = qemu_cluster.workdir / "agent-h1.log"
    await wait_until(lambda: "vm adopted vm=vm-r" in log.read_text(), timeout_s=30)
    after = await wait_state(client, "vm-r", VmState.RUNNING)
    assert qemu_pid(qemu_cluster, "h1", "vm-r") == pid and alive(pid), "same process"
    assert after.generation == before.generation, "not restarted, not duplicated"

    kill(pid)  # ... and QEMU dies: the VM vanishes from the inventory and is started again
    await wait_until(lambda: qemu_pid(qemu_cluster, "h1", "vm-r") not in (None, pid), timeout_s=30)
    await wait_state(client, "vm-r", VmState.RUNNING)
    await wait_until(
        lambda: ready_line(qemu_cluster, "h1", "vm-r").get("boot_count") == "2", timeout_s=BOOT_S
    )


async def test_fenced_guest_is_paused_then_resumed(
    cluster: Cluster, kit: Path, client: StratusClient
) -> None:
    cluster.timings = {"heartbeat_interval_s": 0.2, "fence_after_s": 1.0, "dead_after_s": 8.0}
    config = cluster.workdir / "scheduler.toml"
    config.write_text(f'sizes = [{{ name = "{TINY}", cpu_milli = 1000, mem_mib = 96 }}]\n')
    proxy = CuttableProxy(cluster.nats.port)
    port = await proxy.start()
    try:
        cluster.start_scheduler("--config", str(config))
        start_qemu_agent(cluster, kit, "h1", nats_url=f"nats://127.0.0.1:{port}")
        await wait_hosts_up(client, 1)
        await client.create_vm(CreateVm(name="vm-f", size=TINY))
        await wait_all_running(client, ["vm-f"], timeout_s=BOOT_S)

        def events(kind: str) -> int:
            rows = cluster.execution_log()
            return sum(r["vm"] == "vm-f" and r["event"] == kind for r in rows)

        proxy.sever()
        await wait_until(lambda: events("pause") == 1, timeout_s=10, message="fenced")
        proxy.heal()
        await wait_until(lambda: events("resume") == 1, timeout_s=10, message="resumed")
        vm = await wait_state(client, "vm-f", VmState.RUNNING)
        assert vm.generation == 1, "resumed in place, never re-placed"
    finally:
        await proxy.close()
        cluster.stop()
        for pid in qemu_pids(cluster.workdir):
            kill(pid)


async def test_capture_then_boot_from_the_captured_image(
    qemu_cluster: Cluster, kit: Path, client: StratusClient, tmp_path: Path
) -> None:
    start_qemu_agent(qemu_cluster, kit, "h1")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="vm-src", size=TINY))
    await wait_all_running(client, ["vm-src"], timeout_s=BOOT_S)

    await client.capture_vm(CaptureVm(name="vm-src", image="golden"))
    await wait_state(client, "vm-src", VmState.STOPPED)

    async def available() -> bool:
        [image] = [i for i in await client.list_images() if i.name == "golden"]
        assert image.state is not ImageState.FAILED, image.reason
        return image.state is ImageState.AVAILABLE

    await wait_until(available, timeout_s=60, message="golden available")
    with pytest.raises(ApiError) as not_running:
        await client.capture_vm(CaptureVm(name="vm-src", image="golden-2"))
    assert not_running.value.code == "invalid_state"

    await client.create_vm(CreateVm(name="vm-copy", size=TINY, image="golden"))
    await wait_all_running(client, ["vm-copy"], timeout_s=BOOT_S)
    line = ready_line(qemu_cluster, "h1", "vm-copy")
    assert (line["first_vm"], line["boot_count"]) == ("vm-src", "2"), "the captured disk booted"

    text = tmp_path / "notes.txt"
    text.write_text("not a disk image\n")
    with pytest.raises(ApiError) as bad:
        await client.upload_image(text, "notes")
    assert bad.value.code == "invalid_image"
    with pytest.raises(ApiError) as taken:
        await client.upload_image(kit / "tiny.qcow2", "golden")
    assert taken.value.code == "conflict"


async def test_host_death_rebuilds_the_vm_elsewhere_from_its_image(
    qemu_cluster: Cluster, kit: Path, client: StratusClient, nc: Client
) -> None:
    start_qemu_agent(qemu_cluster, kit, "h1")
    await wait_hosts_up(client, 1)
    await client.create_vm(CreateVm(name="vm-d", size=TINY))
    await wait_all_running(client, ["vm-d"], timeout_s=BOOT_S)
    start_qemu_agent(qemu_cluster, kit, "h2")
    await wait_hosts_up(client, 2)
    old_disk = (await client.get_vm("vm-d")).disks[0].disk_id

    events: list[VmEvent] = []

    async def on_event(msg: Msg) -> None:
        event = codec.event.decode(msg.data)
        if isinstance(event, VmEvent):
            events.append(event)

    await nc.subscribe(subjects.vm_event("vm-d"), cb=on_event)
    pid = qemu_pid(qemu_cluster, "h1", "vm-d")
    assert pid is not None
    qemu_cluster.kill_agent("h1")  # the host dies: its agent and its guests
    kill(pid)

    vm = (await wait_all_running(client, ["vm-d"], timeout_s=BOOT_S, avoid_host="h1"))["vm-d"]
    assert vm.host == "h2"
    assert vm.disks[0].disk_id != old_disk and vm.disks[0].host == "h2"
    assert any("rebuilt from image tiny" in e.reason for e in events), [e.reason for e in events]
    await wait_until(lambda: ready_line(qemu_cluster, "h2", "vm-d").get("boot_count") == "1")
