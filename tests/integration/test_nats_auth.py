"""Access control against a real nats-server running the config ``stratus nats-config`` writes:
nkeys per role and per host, and subject permissions that no credential can step outside."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from cli.client import StratusClient, connect
from cli.natsconfig import generate, new_user_seed
from common import codec, subjects
from common.config import AgentConfig, SchedulerConfig
from common.errors import ApiError
from common.fields import ErrorCode
from common.image_messages import ImageCaptured, ImageState
from common.imagestore import put_image
from common.messages import CaptureVm, CreateVm
from common.natsauth import host_inbox_prefix, inbox_options, redact_url
from common.natsserver import NatsServer, start_nats_server
from hostagent.simpool import SimPool, resolve_pool_settings
from rigs.cluster import Cluster
from scheduler.shell.app import SchedulerApp
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.integration.test_qemu import kill, qemu_pids
from tests.qemukit import boot_kit
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

HOSTS = ["ha", "hb"]


@dataclass
class AuthServer:
    server: NatsServer
    keys: Path

    def seed(self, role: str) -> Path:
        return self.keys / f"{role}.nk"


@pytest.fixture
def auth(tmp_path: Path, nats_server: NatsServer) -> Iterator[AuthServer]:
    # ``nats_server`` only ensures the binary exists (and fails in CI when it does not).
    config = generate(tmp_path / "auth", HOSTS)
    server = start_nats_server(tmp_path / "nats-auth", extra_args=("-c", str(config)))
    try:
        yield AuthServer(server, tmp_path / "auth" / "nkeys")
    finally:
        server.stop()


@dataclass
class Conn:
    nc: Client
    errors: list[str]


@pytest.fixture
async def conns(auth: AuthServer) -> AsyncIterator[dict[str, Conn]]:
    """One connection per role, each recording the errors the server sends it."""
    opened: dict[str, Conn] = {}
    for role in ["scheduler", "publisher", "dashboard", *(f"host-{h}" for h in HOSTS)]:
        errors: list[str] = []

        async def on_error(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc))

        seed = str(auth.seed(role))
        if role.startswith("host-"):
            inbox = {"inbox_prefix": host_inbox_prefix(role.removeprefix("host-"))}
        else:
            inbox = inbox_options(seed)  # as our clients connect: the key's own inboxes
        nc = await nats.connect(
            auth.server.url,
            nkeys_seed=seed,
            error_cb=on_error,
            allow_reconnect=False,
            **inbox,
        )
        opened[role] = Conn(nc, errors)
    try:
        yield opened
    finally:
        for conn in opened.values():
            await conn.nc.close()


async def _receiver(nc: Client, subject: str) -> list[str]:
    seen: list[str] = []

    async def on_msg(msg: Msg) -> None:
        seen.append(msg.subject)

    await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    return seen


async def _publish_then_marker(conn: Conn, denied: list[str], marker: str, seen: list[str]) -> None:
    """Publish to ``denied`` subjects, then an allowed ``marker`` (again until it is seen: under
    load the server has been seen to drop the first one after violations). One connection's
    messages arrive in order, so once a marker is seen any denied message would have too."""
    for subject in denied:
        await conn.nc.publish(subject, b"{}")
    await conn.nc.publish(marker, b"{}")
    await conn.nc.flush()

    async def delivered() -> bool:
        if marker not in seen:
            await conn.nc.publish(marker, b"{}")
        return marker in seen

    await wait_until(delivered, timeout_s=10, interval_s=0.5, message=f"{marker} delivered")
    await wait_until(
        lambda: any("permissions violation" in e.lower() for e in conn.errors),
        timeout_s=10,
        message="the server reports a permissions violation",
    )


async def test_no_credentials_no_connection(auth: AuthServer, tmp_path: Path) -> None:
    with pytest.raises(ApiError):
        await connect(auth.server.url, timeout_s=3)
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_user_seed())
    with pytest.raises(ApiError) as refused:
        await connect(auth.server.url, timeout_s=3, nkey_seed=str(stranger))
    assert stranger.read_text().strip() not in str(refused.value)
    gc.collect()  # a refused connection left open would warn here (warnings are errors)


async def test_an_agent_cannot_heartbeat_as_another_host_or_command_a_host(
    conns: dict[str, Conn],
) -> None:
    seen = await _receiver(conns["scheduler"].nc, "stratus.host.>")
    agent = conns["host-ha"]
    denied = [
        subjects.host_heartbeat("hb"),
        subjects.host_captured("hb"),
        subjects.host_commands("hb"),
        subjects.host_commands("ha"),
        subjects.VM_CREATE,
        subjects.vm_event("x"),
    ]
    await _publish_then_marker(agent, denied, subjects.host_heartbeat("ha"), seen)
    assert set(seen) == {subjects.host_heartbeat("ha")}


async def test_an_agent_receives_only_its_own_commands(conns: dict[str, Conn]) -> None:
    agent = conns["host-ha"]
    own = await _receiver(agent.nc, subjects.host_commands("ha"))
    other = await _receiver(agent.nc, subjects.host_commands("hb"))
    await wait_until(lambda: any("permissions violation" in e.lower() for e in agent.errors))
    scheduler = conns["scheduler"].nc
    await scheduler.publish(subjects.host_commands("hb"), b"{}")
    await scheduler.publish(subjects.host_commands("ha"), b"{}")
    await scheduler.flush()
    await wait_until(lambda: bool(own), timeout_s=10, message="own commands delivered")
    assert other == []


async def test_a_publisher_cannot_command_hosts_or_forge_events(conns: dict[str, Conn]) -> None:
    seen = await _receiver(conns["scheduler"].nc, "stratus.>")
    denied = [
        subjects.host_commands("ha"),
        subjects.host_heartbeat("ha"),
        subjects.vm_event("x"),
        subjects.host_captured("ha"),
    ]
    await _publish_then_marker(conns["publisher"], denied, subjects.VM_CREATE, seen)
    assert set(seen) == {subjects.VM_CREATE}


async def test_an_agent_stores_and_reports_its_own_capture(
    auth: AuthServer, conns: dict[str, Conn], tmp_path: Path
) -> None:
    """Capture under the generated roles: the agent writes the disk's bytes to the images store
    and reports on its own host's subject, and the scheduler answers it (here: no such image).
    Reporting as another host, or as a publisher, never reaches the scheduler (tests above)."""
    app = SchedulerApp(
        SchedulerConfig(
            nats_url=auth.server.url,
            db_path=str(tmp_path / "s.db"),
            nats_nkey_seed=str(auth.seed("scheduler")),
        )
    )
    task = asyncio.create_task(app.run())
    agent = conns["host-ha"].nc
    try:
        async with asyncio.timeout(15):
            await app.ready.wait()
        disk = tmp_path / "disk.qcow2"
        disk.write_bytes(b"a captured disk " * 4096)
        sha256, size = await put_image(agent.jetstream(), disk)
        report = ImageCaptured(image="gold", vm="web", host_id="ha", sha256=sha256, size_bytes=size)
        replies = [
            await conn.request(subjects.host_captured("ha"), codec.encode(body), timeout=10)
            for conn, body in [
                (agent, report),
                (conns["scheduler"].nc, msgspec.structs.replace(report, host_id="hb")),
            ]
        ]
        old_route = await conns["publisher"].nc.request(
            "stratus.api.image.captured", codec.encode(report), timeout=10
        )
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=15)
    codes = [codec.image_reply.decode(r.data).error for r in [*replies, old_route]]
    assert [e.code if e else None for e in codes] == [
        ErrorCode.NOT_FOUND,  # the agent's own report reached the scheduler and got its answer
        ErrorCode.INVALID_REQUEST,  # a body naming another host than its subject
        ErrorCode.INVALID_REQUEST,  # the old API route is gone (unknown subject)
    ]
    assert conns["host-ha"].errors == [], "no permission was missing for the capture"


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_a_qemu_capture_under_the_generated_roles(auth: AuthServer, tmp_path: Path) -> None:
    """The whole capture (the disk's bytes into the images store, then the report) with every
    process on its own seed: the agent needs no broader credentials."""
    kit = boot_kit()
    cluster = Cluster(auth.server, tmp_path / "cluster")
    cluster.workdir.mkdir()
    config = cluster.workdir / "scheduler.toml"
    config.write_text(
        'sizes = [{ name = "Tiny", cpu_milli = 1000, mem_mib = 96 }]\n'
        f'builtin_images = {{ tiny = "{kit / "tiny.qcow2"}" }}\n'
    )
    cluster.start_scheduler("--config", str(config), "--nkey-seed", str(auth.seed("scheduler")))
    qemu = ("--driver", "qemu", "--boot-dir", str(kit), "--accel", "tcg")
    cluster.start_agent(
        "ha", capacity="4c/4g", extra=(*qemu, "--nkey-seed", str(auth.seed("host-ha")))
    )
    publisher = await connect(auth.server.url, nkey_seed=str(auth.seed("publisher")))
    client = StratusClient(publisher, timeout_s=10)

    async def available() -> bool:
        [image] = [i for i in await client.list_images() if i.name == "golden"]
        assert image.state is not ImageState.FAILED, image.reason
        return image.state is ImageState.AVAILABLE

    try:
        await wait_hosts_up(client, 1)
        await client.create_vm(CreateVm(name="src", size="Tiny"))
        await wait_all_running(client, ["src"], timeout_s=60)
        await client.capture_vm(CaptureVm(name="src", image="golden"))
        await wait_until(available, timeout_s=90, message="golden available")
    finally:
        await publisher.close()
        cluster.stop()
        for pid in qemu_pids(cluster.workdir):
            kill(pid)


async def test_a_simulated_pool_runs_with_credentials(auth: AuthServer, tmp_path: Path) -> None:
    """``stratus agent --simulate N`` takes a seed like the agent (deploy/nats/README: no role of
    its own can be narrower than every host, so a benchmark server gives it ``admin``)."""
    app = SchedulerApp(
        SchedulerConfig(
            nats_url=auth.server.url,
            db_path=str(tmp_path / "s.db"),
            nats_nkey_seed=str(auth.seed("scheduler")),
        )
    )
    pool_config = AgentConfig(
        nats_url=auth.server.url, nats_nkey_seed=str(auth.seed("admin")), data_dir=str(tmp_path)
    )
    pool = SimPool(resolve_pool_settings(pool_config, 2, "sim", 1))
    tasks = [asyncio.create_task(app.run()), asyncio.create_task(pool.run())]
    publisher = await connect(auth.server.url, nkey_seed=str(auth.seed("publisher")))
    try:
        await wait_hosts_up(StratusClient(publisher), 2)
    finally:
        await publisher.close()
        pool.request_stop()
        app.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)


async def test_a_dashboard_cannot_create(conns: dict[str, Conn]) -> None:
    seen = await _receiver(conns["scheduler"].nc, "stratus.>")
    denied = [
        subjects.VM_CREATE,
        subjects.VM_DELETE,
        subjects.HOST_DRAIN,
        subjects.job_subject(subjects.VM_CREATE),
    ]
    await _publish_then_marker(conns["dashboard"], denied, subjects.VM_LIST, seen)
    assert set(seen) == {subjects.VM_LIST}


async def test_the_cluster_runs_under_auth_and_never_shows_a_secret(
    auth: AuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = SchedulerConfig(
        nats_url=auth.server.url,
        db_path=str(tmp_path / "s.db"),
        nats_nkey_seed=str(auth.seed("scheduler")),
        heartbeat_interval_s=0.2,
        fence_after_s=1.5,
        dead_after_s=3.0,
    )
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    cluster = Cluster(auth.server, tmp_path / "cluster")
    cluster.workdir.mkdir()
    publisher = await connect(auth.server.url, nkey_seed=str(auth.seed("publisher")))
    dashboard = await connect(auth.server.url, nkey_seed=str(auth.seed("dashboard")))
    try:
        async with asyncio.timeout(15):
            await app.ready.wait()
        for host in HOSTS:
            cluster.start_agent(host, extra=("--nkey-seed", str(auth.seed(f"host-{host}"))))
        client = StratusClient(publisher, timeout_s=10)
        await wait_hosts_up(client, len(HOSTS))
        names = [f"sec-{i}" for i in range(4)]
        for name in names:
            await client.create_vm(CreateVm(name=name, size="Small"))
        await wait_all_running(client, names)
        assert len(await StratusClient(dashboard).list_vms()) == len(names)
        with pytest.raises(ApiError) as refused:
            await client.get_vm("no-such-vm")
        events = await _all_events(publisher)
    finally:
        await publisher.close()
        await dashboard.close()
        cluster.stop()
        app.stop()
        await asyncio.wait_for(task, timeout=15)
    assert len(events) >= len(names)
    seeds = [path.read_text().strip() for path in auth.keys.glob("*.nk")]
    texts = {
        "scheduler log": caplog.text,
        "events": "\n".join(events),
        "error reply": str(refused.value),
        **{p.name: p.read_text() for p in cluster.workdir.glob("*.log")},
    }
    for where, text in texts.items():
        for seed in seeds:
            assert seed not in text, f"a seed appears in the {where}"
            assert seed[:20] not in text, f"part of a seed appears in the {where}"


async def _all_events(nc: Client) -> list[str]:
    """Every event so far, read by sequence (a publisher may not create consumers)."""
    js = nc.jetstream()
    state = (await js.stream_info(subjects.EVENTS_STREAM)).state
    bodies: list[str] = []
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await js.get_msg(subjects.EVENTS_STREAM, seq=seq)
        bodies.append((msg.data or b"").decode())
    return bodies


def test_urls_are_shown_without_their_secrets() -> None:
    assert redact_url("nats://alice:s3cret@10.0.0.1:4222") == "nats://***@10.0.0.1:4222"
    assert redact_url("nats://tok3n@h:1,nats://h2:2") == "nats://***@h:1,nats://h2:2"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


async def test_tls_with_the_development_ca(nats_server: NatsServer, tmp_path: Path) -> None:
    config = generate(tmp_path / "auth", ["ha"], tls_names=[])
    server = start_nats_server(tmp_path / "nats-tls", extra_args=("-c", str(config)))
    keys, ca = tmp_path / "auth" / "nkeys", str(tmp_path / "auth" / "tls" / "ca.pem")
    url = f"tls://127.0.0.1:{server.port}"
    app = SchedulerApp(
        SchedulerConfig(
            nats_url=url,
            db_path=str(tmp_path / "s.db"),
            nats_nkey_seed=str(keys / "scheduler.nk"),
            nats_tls_ca=ca,
        )
    )
    task = asyncio.create_task(app.run())
    cluster = Cluster(server, tmp_path / "cluster")
    cluster.workdir.mkdir()
    try:
        async with asyncio.timeout(15):
            await app.ready.wait()
        seed = str(keys / "host-ha.nk")
        cluster.start_agent("ha", nats_url=url, extra=("--nkey-seed", seed, "--tls-ca", ca))
        publisher = await connect(url, nkey_seed=str(keys / "publisher.nk"), tls_ca=ca)
        try:
            await wait_hosts_up(StratusClient(publisher), 1)
        finally:
            await publisher.close()
        with pytest.raises(ApiError):  # the system's CAs do not trust the development CA
            await connect(url, nkey_seed=str(keys / "publisher.nk"), timeout_s=3)
        gc.collect()
    finally:
        cluster.stop()
        app.stop()
        await asyncio.wait_for(task, timeout=15)
        server.stop()
