"""Every role tries every action it must not do, against a real nats-server running the config
``stratus nats-config`` writes, and each attempt is refused (and changes nothing).

Kinds of attempt: writing the control plane's own state (the leader lease, the state log, its
snapshots: the scheduler role's alone, not even an admin's), publishing where the role may not
(seen by an observer holding ``>``), reading subjects it may not (another client's reply
inboxes, the scheduler's job fetches, API requests, other hosts' commands), purging the images
object store, and creating a JetStream consumer, which a role could point at a subject it
cannot publish to (nats-server does not check a push consumer's deliver subject against its
creator's permissions, nats-io/nats-server#8274): with the images store, uploaded bytes
delivered to ``stratus.host.<id>.cmd`` would be taken as a host's commands."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig

from cli.client import connect
from cli.natsconfig import OBJ_STREAM, generate
from common import subjects
from common.imagestore import image_bucket
from common.natsauth import host_inbox_prefix
from common.natsserver import start_nats_server
from common.streams import ensure_streams
from scheduler.shell.leader import LEASE_KEY, lease_bucket
from scheduler.shell.statelog import SNAPSHOT_OBJECT, ensure_state_log, snapshot_bucket
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOSTS = ["ha", "hb"]
ROLES = ["publisher", "dashboard", "host-ha", "admin"]
EVENTS, JOBS = subjects.EVENTS_STREAM, subjects.JOBS_STREAM
MARKER = {  # a subject each role may publish to: once seen, earlier denied ones would be too
    "publisher": subjects.VM_CREATE,
    "dashboard": subjects.VM_LIST,
    "host-ha": subjects.host_heartbeat("ha"),
    "admin": subjects.VM_LIST,
}
LEASE_STREAM = f"KV_{subjects.LEASE_BUCKET}"
SNAP_STREAM = f"OBJ_{subjects.SNAPSHOT_BUCKET}"
CONTROL_PLANE = [  # only the scheduler role writes the lease, the state log and its snapshots
    f"$KV.{subjects.LEASE_BUCKET}.{LEASE_KEY}",
    subjects.STATE_SUBJECT,
    f"$O.{subjects.SNAPSHOT_BUCKET}.C.x",
    f"$O.{subjects.SNAPSHOT_BUCKET}.M.bGF0ZXN0",
    f"$JS.API.STREAM.PURGE.{LEASE_STREAM}",
    f"$JS.API.STREAM.UPDATE.{LEASE_STREAM}",
    f"$JS.API.STREAM.DELETE.{subjects.STATE_STREAM}",
    f"$JS.API.STREAM.MSG.DELETE.{subjects.STATE_STREAM}",
    f"$JS.API.STREAM.PURGE.{SNAP_STREAM}",
]
ALWAYS_DENIED = [
    subjects.host_commands("ha"),
    subjects.host_commands("hb"),
    subjects.host_heartbeat("hb"),
    subjects.host_captured("hb"),
    subjects.vm_event("web"),
    subjects.host_event("ha"),
    f"$JS.API.STREAM.PURGE.{OBJ_STREAM}",
    f"$JS.API.STREAM.DELETE.{OBJ_STREAM}",
    f"$JS.API.STREAM.DELETE.{EVENTS}",
    f"$JS.API.STREAM.PURGE.{JOBS}",
    f"$JS.API.CONSUMER.CREATE.{EVENTS}",
    f"$JS.API.CONSUMER.CREATE.{OBJ_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{JOBS}",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{EVENTS}.x",
    f"$JS.API.CONSUMER.MSG.NEXT.{JOBS}.{subjects.JOBS_CONSUMER}",
    subjects.console_output("hb", "web"),
    subjects.console_tail("ha", "web") + ".x",
    *CONTROL_PLANE,
]
HOLDER = b'{"node": "n1", "scheduler_id": "n1"}'
FORGED_OUTPUT = subjects.console_output("ha", "web")
VICTIM = b'{"host_id": "ha", "commands": []}'
VICTIM_META = f"$O.{subjects.IMAGES_BUCKET}.M.{base64.urlsafe_b64encode(b'victim').decode()}"
"""An image object's metadata: only the scheduler writes it, after checking staged chunks."""
PUBLISH_DENIED = {
    "publisher": [*ALWAYS_DENIED, FORGED_OUTPUT, VICTIM_META],
    "dashboard": [
        *ALWAYS_DENIED,
        FORGED_OUTPUT,
        subjects.console_input("ha", "web"),
        subjects.VM_CREATE,
        subjects.VM_DELETE,
        subjects.VM_STOP,
        subjects.HOST_DRAIN,
        subjects.HOST_CORDON,
        subjects.IMAGE_UPLOAD,
        subjects.job_subject(subjects.VM_CREATE),
        f"$O.{subjects.IMAGES_BUCKET}.C.x",
        VICTIM_META,
    ],
    "host-ha": [
        *[s for s in ALWAYS_DENIED if s != subjects.host_commands("ha")],
        VICTIM_META,
        subjects.VM_CREATE,
        subjects.VM_DELETE,
        subjects.job_subject(subjects.VM_DELETE),
        subjects.console_input("hb", "web"),
        subjects.console_tail("hb", "web"),
    ],
    "admin": CONTROL_PLANE,
}
SUBSCRIBE_DENIED = {  # (subscription, a subject the observer then publishes on it)
    "publisher": [
        ("_INBOX.>", "_INBOX.someone.1"),
        ("_INBOX_ha.>", "_INBOX_ha.reply.1"),
        (subjects.API_WILDCARD, subjects.VM_DELETE),
        (subjects.JOBS_WILDCARD, subjects.job_subject(subjects.VM_CREATE)),
        ("stratus.host.>", subjects.host_commands("ha")),
    ],
    "dashboard": [
        ("_INBOX.>", "_INBOX.someone.1"),
        ("_INBOX_hb.>", "_INBOX_hb.reply.1"),
        (subjects.API_WILDCARD, subjects.VM_CREATE),
        ("stratus.host.>", subjects.host_heartbeat("ha")),
        (subjects.console_input("*", "*"), subjects.console_input("ha", "web")),
    ],
    "host-ha": [
        ("_INBOX.>", "_INBOX.someone.1"),
        ("_INBOX_hb.>", "_INBOX_hb.reply.1"),
        (subjects.host_commands("hb"), subjects.host_commands("hb")),
        (subjects.API_WILDCARD, subjects.VM_CREATE),
        (subjects.console_input("hb", "*"), subjects.console_input("hb", "web")),
        (subjects.console_tail("hb", "*"), subjects.console_tail("hb", "web")),
        (subjects.console_output("hb", "*"), subjects.console_output("hb", "web")),
    ],
    "admin": [],
}


@dataclass
class Role:
    nc: Client
    errors: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)


@dataclass
class Setup:
    observer: Client
    seen: list[str]
    roles: dict[str, Role]


@pytest.fixture
async def setup(tmp_path: Path, nats_server: object) -> AsyncIterator[Setup]:
    config = generate(tmp_path / "auth", HOSTS)
    server = start_nats_server(tmp_path / "nats", extra_args=("-c", str(config)))
    keys = tmp_path / "auth" / "nkeys"
    observer = await connect(server.url, nkey_seed=str(keys / "scheduler.nk"))
    roles: dict[str, Role] = {}
    try:
        js = observer.jetstream()
        await ensure_streams(js)
        bucket = await image_bucket(js)
        await bucket.put("victim", VICTIM)
        await ensure_state_log(js, 1)
        kv = await lease_bucket(js, lease_s=3600.0, replicas=1)
        await kv.put(LEASE_KEY, HOLDER)
        await js.publish(subjects.STATE_SUBJECT, b"batch")
        await (await snapshot_bucket(js)).put(SNAPSHOT_OBJECT, b"snapshot")
        seen: list[str] = []

        async def on_msg(msg: Msg) -> None:
            seen.append(msg.subject)

        for subject in {s for denied in PUBLISH_DENIED.values() for s in denied} | set(
            MARKER.values()
        ):
            await observer.subscribe(subject, cb=on_msg)
        await observer.flush()
        for name in ROLES:
            seed = str(keys / f"{name}.nk")
            if name.startswith("host-"):  # an agent's replies come to _INBOX_<host>
                inbox = host_inbox_prefix(name.removeprefix("host-"))
                nc = await nats.connect(server.url, nkeys_seed=seed, inbox_prefix=inbox)
            else:
                nc = await connect(server.url, nkey_seed=seed)
            role = Role(nc)
            role.nc._error_cb = _recorder(role.errors)  # connect() silences them
            roles[name] = role
        yield Setup(observer, seen, roles)
    finally:
        for role in roles.values():
            await role.nc.close()
        await observer.close()
        server.stop()


def _recorder(errors: list[str]):  # type: ignore[no-untyped-def]
    async def record(exc: Exception) -> None:
        errors.append(str(exc).lower())

    return record


async def _attempt_publishes(setup: Setup, name: str) -> int:
    role = setup.roles[name]
    setup.seen.clear()  # what the observer saw for earlier roles, or published itself
    for subject in PUBLISH_DENIED[name]:
        await role.nc.publish(subject, b"{}")
    marker = MARKER[name]
    await role.nc.publish(marker, b"{}")
    await role.nc.flush()

    async def delivered() -> bool:
        if marker not in setup.seen:
            await role.nc.publish(marker, b"{}")
        return marker in setup.seen

    await wait_until(delivered, timeout_s=10, interval_s=0.5, message=f"{marker} delivered")
    leaked = sorted({s for s in setup.seen if s in PUBLISH_DENIED[name]})
    assert leaked == [], f"{name} published to {leaked}"
    return len(PUBLISH_DENIED[name])


async def _attempt_subscribes(setup: Setup, name: str) -> int:
    role = setup.roles[name]

    async def on_msg(msg: Msg) -> None:
        role.received.append(msg.subject)

    for subscription, _ in SUBSCRIBE_DENIED[name]:
        await role.nc.subscribe(subscription, cb=on_msg)
    await role.nc.flush()
    for _, subject in SUBSCRIBE_DENIED[name]:
        await setup.observer.publish(subject, b"{}")
    await setup.observer.flush()
    await role.nc.flush()
    for subscription, _ in SUBSCRIBE_DENIED[name]:
        wanted = subscription.lower()

        def refused(wanted: str = wanted) -> bool:
            errors = role.errors
            return any(
                "permissions violation for subscription" in e and wanted in e for e in errors
            )

        await wait_until(refused, timeout_s=10, message=f"{name} refused {subscription}")
    assert role.received == [], f"{name} received {role.received}"
    return len(SUBSCRIBE_DENIED[name])


async def _attempt_control_plane_writes(setup: Setup, name: str) -> int:
    """Through JetStream as a client would: forge the lease, append to the state log, replace
    the snapshot, purge or delete their streams. Each refused; the observer finds all as was."""
    js = setup.roles[name].nc.jetstream(timeout=1.0)
    forged = b'{"node": "forged", "scheduler_id": "forged"}'
    attempts = [
        js.publish(f"$KV.{subjects.LEASE_BUCKET}.{LEASE_KEY}", forged),
        js.publish(subjects.STATE_SUBJECT, b"forged", headers={"Nats-Expected-Last-Sequence": "1"}),
        js.publish(f"$O.{subjects.SNAPSHOT_BUCKET}.C.forged", b"forged"),
        js.purge_stream(subjects.STATE_STREAM),
        js.purge_stream(LEASE_STREAM),
        js.delete_stream(LEASE_STREAM),
        # as JetStreamManager.delete_msg sends it, which waits 5 s whatever the context's timeout
        setup.roles[name].nc.request(
            f"$JS.API.STREAM.MSG.DELETE.{subjects.STATE_STREAM}", b'{"seq": 1}', timeout=1.0
        ),
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert all(isinstance(r, nats.errors.Error | TimeoutError) for r in results), (name, results)
    observer = setup.observer.jetstream()
    entry = await (await observer.key_value(subjects.LEASE_BUCKET)).get(LEASE_KEY)
    assert entry.value == HOLDER, name
    assert (await observer.stream_info(subjects.STATE_STREAM)).state.messages == 1, name
    snapshot = await (await snapshot_bucket(observer)).get(SNAPSHOT_OBJECT)
    assert snapshot.data == b"snapshot", name
    return len(attempts)


async def _attempt_image_overwrite(setup: Setup, name: str) -> int:
    """Overwrite a stored image as nats-py's object store would (chunks, then metadata) and
    delete it (a metadata message marking it deleted): both refused, the object unchanged."""
    bucket = await image_bucket(setup.roles[name].nc.jetstream(timeout=1.0), create=False)
    stored = await image_bucket(setup.observer.jetstream())
    before = await stored.get_info("victim")
    attempts = (bucket.put("victim", b"forged bytes"), bucket.delete("victim"))
    results = await asyncio.gather(*attempts, return_exceptions=True)  # each waits out refusals
    assert all(isinstance(r, nats.errors.Error | TimeoutError) for r in results), (name, results)
    after = await stored.get_info("victim")
    assert (after.nuid, after.digest, after.deleted) == (before.nuid, before.digest, False), name
    return 2


async def _attempt_consumers_and_purge(setup: Setup, name: str) -> int:
    """A push consumer delivering into another host's commands or the API, a pull consumer, and
    a purge of the images store: each refused, and nothing exists or changed afterwards."""
    js = setup.roles[name].nc.jetstream(timeout=1.0)
    attempts: list[Coroutine[object, object, object]] = [
        js.add_consumer(stream, ConsumerConfig(deliver_subject=deliver, ack_policy=AckPolicy.NONE))
        for stream in (EVENTS, OBJ_STREAM, JOBS)
        for deliver in (subjects.host_commands("hb"), subjects.VM_DELETE, None)
    ]
    attempts.append(js.purge_stream(OBJ_STREAM))
    results = await asyncio.gather(*attempts, return_exceptions=True)  # all at once: each waits
    assert all(isinstance(r, nats.errors.Error | TimeoutError) for r in results), (name, results)
    observer = setup.observer.jetstream()
    for stream in (EVENTS, OBJ_STREAM, JOBS):
        assert (await observer.stream_info(stream)).state.consumer_count == 0, stream
    assert (await observer.stream_info(OBJ_STREAM)).state.messages > 0, "purged"
    return len(attempts)


async def test_every_role_is_refused_every_action_it_must_not_do(setup: Setup) -> None:
    attempts = 0
    for name in ROLES:
        attempts += await _attempt_publishes(setup, name)
        attempts += await _attempt_subscribes(setup, name)
        attempts += await _attempt_control_plane_writes(setup, name)
        if name in ("publisher", "host-ha"):  # the roles that may stage image chunks
            attempts += await _attempt_image_overwrite(setup, name)
        if name != "admin":  # an admin may manage consumers and the images store
            attempts += await _attempt_consumers_and_purge(setup, name)
    assert attempts >= 50, attempts
    print(f"{attempts} forbidden attempts, all refused")


async def test_each_role_reads_replies_only_in_its_own_inbox(setup: Setup) -> None:
    """Requests work (the reply comes back to the requester's own prefix), and that prefix is
    not another role's: a dashboard cannot subscribe to the publisher's inbox."""
    observer = setup.observer

    async def answer(msg: Msg) -> None:
        await msg.respond(b"answer")

    await observer.subscribe(subjects.VM_LIST, cb=answer)
    await observer.flush()
    prefixes = {}
    for name in ("publisher", "dashboard"):
        nc = setup.roles[name].nc
        assert await _answered(nc, subjects.VM_LIST, b"{}") == b"answer"
        prefixes[name] = nc.new_inbox().rsplit(".", 1)[0]
    assert prefixes["publisher"] != prefixes["dashboard"] and "_INBOX" not in prefixes.values()
    dashboard = setup.roles["dashboard"]
    await dashboard.nc.subscribe(f"{prefixes['publisher']}.>")
    await dashboard.nc.flush()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while not any("permissions violation" in e for e in dashboard.errors):
                await dashboard.nc.flush()
    assert any(prefixes["publisher"].lower() in e for e in dashboard.errors), dashboard.errors


async def test_consoles_are_served_by_their_host_to_the_roles_that_may_use_them(
    setup: Setup,
) -> None:
    """The host answers its own VMs' tail and input requests in the requesters' inboxes (it
    may only respond); publishers and dashboards follow output; publishers type, dashboards
    cannot (their attempts are in PUBLISH_DENIED)."""
    host = setup.roles["host-ha"].nc
    typed: list[bytes] = []

    async def answer(msg: Msg) -> None:
        if msg.subject.endswith(".in"):
            typed.append(msg.data)
        await msg.respond(b"ok")

    await host.subscribe(subjects.console_tail("ha", "*"), cb=answer)
    await host.subscribe(subjects.console_input("ha", "*"), cb=answer)
    await host.flush()
    for name in ("publisher", "dashboard"):
        nc = setup.roles[name].nc
        assert await _answered(nc, subjects.console_tail("ha", "web"), b"{}") == b"ok"
        follow = await nc.subscribe(subjects.console_output("*", "*"))
        await nc.flush()
        assert await _followed(host, follow, FORGED_OUTPUT, b"output") == b"output"
        await follow.unsubscribe()
    publisher = setup.roles["publisher"].nc
    assert await _answered(publisher, subjects.console_input("ha", "web"), b"ls") == b"ok"
    assert typed == [b"ls"]
    assert setup.roles["host-ha"].errors == []


async def _followed(host: Client, follow: Subscription, subject: str, body: bytes) -> bytes:
    """What ``follow`` gets of ``body`` that ``host`` publishes (again each half second, for at
    most 10 s: a loaded CI run once waited 5 s for one output message in vain)."""
    got: list[bytes] = []

    async def delivered() -> bool:
        await host.publish(subject, body)
        with contextlib.suppress(nats.errors.TimeoutError):
            got.append((await follow.next_msg(timeout=0.5)).data)
        return bool(got)

    await wait_until(delivered, timeout_s=10, interval_s=0.01, message=f"output on {subject}")
    return got[0]


async def _answered(nc: Client, subject: str, body: bytes) -> bytes:
    """The answer to a request, asked again while the server reports no responders yet (a
    subscription made on another connection can take a moment to be seen under load) or no
    answer came in 5 s (a loaded CI run waited that long for the first answer of a test in
    vain); what comes back, and where, is what the tests judge."""
    answers: list[bytes] = []

    async def answered() -> bool:
        with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
            answers.append((await nc.request(subject, body, timeout=5)).data)
        return bool(answers)

    await wait_until(answered, timeout_s=20, interval_s=0.1, message=f"an answer on {subject}")
    return answers[0]
