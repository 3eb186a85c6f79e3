"""The publisher API against a real scheduler and agent: every bad input gets a typed error and
changes nothing; durable jobs survive a scheduler outage; retries are idempotent."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client

from cli.client import StratusClient
from common import codec, subjects
from common.errors import ApiError
from common.fields import ErrorCode
from common.list_messages import ListVms
from common.messages import CreateVm, JobRejected, VmEvent, VmState
from common.streams import ensure_streams
from rigs.cluster import Cluster
from tests.integration.helpers import wait_all_running, wait_hosts_up
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


async def one_host(cluster: Cluster, client: StratusClient) -> None:
    cluster.start_scheduler()
    cluster.start_agent("h1", capacity="8c/16g")
    await wait_hosts_up(client, 1)


async def raw(nc: Client, subject: str, body: bytes) -> dict[str, object]:
    msg = await nc.request(subject, body, timeout=5)
    decoded = msgspec.json.decode(msg.data)
    assert isinstance(decoded, dict)
    return decoded


BAD_CREATES = [
    (b"{not json", ErrorCode.INVALID_REQUEST),
    (b"[]", ErrorCode.INVALID_REQUEST),
    (b'{"name": "a"}', ErrorCode.INVALID_REQUEST),
    (b'{"name": "Bad_Name", "size": "Small"}', ErrorCode.INVALID_REQUEST),
    (b'{"name": "' + b"a" * 64 + b'", "size": "Small"}', ErrorCode.INVALID_REQUEST),
    (b'{"name": "a", "size": 5}', ErrorCode.INVALID_REQUEST),
    (b'{"name": "a", "size": "Gigantic"}', ErrorCode.UNKNOWN_SIZE),
    (b'{"name": "a", "size": "A7"}', ErrorCode.INSUFFICIENT_CAPACITY),
    (b'{"name": "a", "size": "Small", "pad": "' + b"x" * 70_000 + b'"}', ErrorCode.TOO_LARGE),
]


@pytest.mark.parametrize(
    ("body", "code"),
    BAD_CREATES,
    ids=[
        "malformed-json",
        "not-an-object",
        "missing-size",
        "bad-name",
        "long-name",
        "size-wrong-type",
        "unknown-size",
        "bigger-than-any-host",
        "oversized-body",
    ],
)
async def test_bad_create_gets_a_typed_error_and_changes_nothing(
    cluster: Cluster, client: StratusClient, nc: Client, body: bytes, code: ErrorCode
) -> None:
    await one_host(cluster, client)
    await client.create_vm(CreateVm(name="keep", size="Small"))
    await wait_all_running(client, ["keep"])  # settled: only the bad request could change it
    before = await client.list_vms(ListVms())
    reply = await raw(nc, subjects.VM_CREATE, body)
    error = reply["error"]
    assert isinstance(error, dict)
    assert error["code"] == code.value and error["detail"]
    after = await client.list_vms(ListVms())
    assert [(v.name, v.state, v.generation) for v in after] == [
        (v.name, v.state, v.generation) for v in before
    ]
    # The scheduler is still serving.
    await client.create_vm(CreateVm(name="still-serving", size="Small"))


async def test_not_found_conflict_and_invalid_state(
    cluster: Cluster, client: StratusClient
) -> None:
    await one_host(cluster, client)
    for call in (client.get_vm("ghost"), client.stop_vm("ghost"), client.delete_vm("ghost")):
        with pytest.raises(ApiError) as info:
            await call
        assert info.value.code == ErrorCode.NOT_FOUND
    await client.create_vm(CreateVm(name="a", size="Small"))
    with pytest.raises(ApiError) as info:
        await client.create_vm(CreateVm(name="a", size="Medium"))
    assert info.value.code == ErrorCode.CONFLICT
    same = await client.create_vm(CreateVm(name="a", size="Small"))
    assert same.name == "a" and same.generation == 1
    await wait_all_running(client, ["a"])
    deleting = await client.delete_vm("a")
    assert deleting.state in (VmState.DELETING, VmState.DELETED)
    with pytest.raises(ApiError) as info:
        await client.start_vm("a")
    assert info.value.code in (ErrorCode.INVALID_STATE, ErrorCode.NOT_FOUND)


async def test_stop_start_delete_lifecycle(cluster: Cluster, client: StratusClient) -> None:
    await one_host(cluster, client)
    await client.create_vm(CreateVm(name="web", size="Medium"))
    await wait_all_running(client, ["web"])
    await client.stop_vm("web")
    await wait_until(
        lambda: _state(client, "web", VmState.STOPPED), timeout_s=10, message="web stopped"
    )
    [host] = await client.list_hosts()
    assert host.allocated.cpu_milli == 0 and host.vms == 0
    await client.start_vm("web")
    await wait_all_running(client, ["web"])
    await client.delete_vm("web")
    await wait_until(
        lambda: _state(client, "web", VmState.DELETED), timeout_s=10, message="web deleted"
    )
    assert [vm.name for vm in await client.list_vms()] == []


async def _state(client: StratusClient, name: str, state: VmState) -> bool:
    return (await client.get_vm(name)).state is state


async def test_read_requests_with_bad_bodies_get_errors(
    nc: Client, cluster: Cluster, client: StratusClient
) -> None:
    await one_host(cluster, client)
    reply = await raw(nc, subjects.VM_LIST, b'{"state": "sleeping"}')
    assert reply["error"]["code"] == "invalid_request"  # type: ignore[index]
    reply = await raw(nc, subjects.VM_GET, b"\xff\xfe")
    assert reply["error"]["code"] == "invalid_request"  # type: ignore[index]
    sizes = await client.list_sizes()
    assert {"ExtraSmall", "Small", "Medium", "Large", "ExtraLarge", "A6", "A7"} <= {
        s.name for s in sizes
    }


async def test_jobs_published_while_the_scheduler_is_down_are_placed_when_it_starts(
    cluster: Cluster, client: StratusClient, nc: Client
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)  # the streams exist (as after any earlier start): jobs are durable
    names = [f"job-{i}" for i in range(5)]
    for name in names:
        await client.submit_job(subjects.VM_CREATE, CreateVm(name=name, size="Small"), f"id-{name}")
    # A retried publish with the same Nats-Msg-Id is stored once.
    await client.submit_job(subjects.VM_CREATE, CreateVm(name="job-0", size="Small"), "id-job-0")
    await js.publish(
        subjects.job_subject(subjects.VM_CREATE), b"{broken", headers={"Nats-Msg-Id": "id-broken"}
    )
    await client.submit_job(subjects.VM_CREATE, CreateVm(name="huge", size="Nope"), "id-huge")
    info = await js.stream_info(subjects.JOBS_STREAM)
    assert info.state.messages == 7
    cluster.start_scheduler()
    cluster.start_agent("h1", capacity="8c/16g")
    await wait_hosts_up(client, 1)
    await wait_all_running(client, names)
    await wait_until(lambda: _stream_empty(nc), timeout_s=10, message="jobs acked")
    rejected = await _events(nc, subjects.JOB_REJECTED)
    codes = sorted((e.request_id, e.code) for e in rejected if isinstance(e, JobRejected))
    assert codes == [("id-broken", ErrorCode.INVALID_REQUEST), ("id-huge", ErrorCode.UNKNOWN_SIZE)]
    created = [e for e in await _events(nc, subjects.vm_event("job-0")) if isinstance(e, VmEvent)]
    assert [e.state for e in created][:1] == [VmState.PENDING]
    assert {e.generation for e in created} == {1}  # created once, despite the retried publish


async def _stream_empty(nc: Client) -> bool:
    info = await nc.jetstream().stream_info(subjects.JOBS_STREAM)
    return info.state.messages == 0


async def _events(nc: Client, subject: str) -> list[object]:
    sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
    events: list[object] = []
    while True:
        try:
            msg = await sub.next_msg(timeout=0.5)
        except Exception:
            break
        events.append(codec.event.decode(msg.data))
    await sub.unsubscribe()
    return events


async def test_repeated_request_id_returns_the_original_result(
    cluster: Cluster, client: StratusClient
) -> None:
    await one_host(cluster, client)
    first = await client.create_vm(CreateVm(name="a", size="Small", request_id="req-1"))
    await wait_all_running(client, ["a"])
    again = await client.create_vm(CreateVm(name="a", size="Small", request_id="req-1"))
    assert again == first
    stop1 = await client.stop_vm("a", request_id="stop-1")
    stop2 = await client.stop_vm("a", request_id="stop-1")
    assert stop1 == stop2


async def test_a_request_id_reused_for_another_request_is_a_conflict(
    cluster: Cluster, client: StratusClient
) -> None:
    await one_host(cluster, client)
    await client.create_vm(CreateVm(name="a", size="Small", request_id="req-1"))
    with pytest.raises(ApiError) as raised:
        await client.create_vm(CreateVm(name="b", size="Small", request_id="req-1"))
    assert raised.value.code == ErrorCode.CONFLICT
    assert "request id req-1 was used for another request" in str(raised.value)
    with pytest.raises(ApiError):
        await client.delete_vm("a", request_id="req-1")
    vms = {vm.name: vm.state for vm in await client.list_vms()}
    assert "b" not in vms and vms["a"] is not VmState.DELETING


async def test_a_job_without_a_request_id_is_refused_and_applies_nothing(
    cluster: Cluster, client: StratusClient, nc: Client
) -> None:
    await one_host(cluster, client)
    js = nc.jetstream()
    await js.publish(
        subjects.job_subject(subjects.VM_CREATE), codec.encode(CreateVm(name="c", size="Small"))
    )
    await wait_until(lambda: _stream_empty(nc), timeout_s=10, message="job acked")
    rejected = [e for e in await _events(nc, subjects.JOB_REJECTED) if isinstance(e, JobRejected)]
    assert [(e.request_id, e.code) for e in rejected] == [(None, ErrorCode.MISSING_REQUEST_ID)]
    assert "Nats-Msg-Id" in rejected[0].detail
    assert [vm.name for vm in await client.list_vms()] == []
