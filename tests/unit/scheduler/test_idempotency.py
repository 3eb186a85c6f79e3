"""A request id names one request: (operation, target, body). A retry of it gets the original
answer; the id reused for anything else is answered ``conflict`` and changes nothing; two
copies of it in one core step apply once; a job with no id at all is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from common import codec, subjects
from common.fields import ErrorCode
from common.messages import AttachDisk, CreateVm, HostRef, HostReply, VmRef, VmReply, VmState
from scheduler.core.contract import InvalidJob, Mutation, Op, Reply
from scheduler.shell.api import decode_mutation
from scheduler.shell.store import SqliteStore
from tests.unit.scheduler.corekit import CoreKit

CONFLICT_DETAIL = "request id r-1 was used for another request"


def with_host() -> CoreKit:
    kit = CoreKit()
    kit.heartbeat("h1")
    return kit


def answer(kit: CoreKit, op: Op, body: msgspec.Struct, *, copies: int = 1) -> list[object]:
    """Send ``copies`` of one request in a single core step; their replies, in order."""
    tokens = [next(kit.tokens) for _ in range(copies)]
    kit.step(*(Mutation(op, body, token) for token in tokens))  # type: ignore[arg-type]
    by_token = {a.token: a.body for a in kit.actions if isinstance(a, Reply)}
    return [by_token[token] for token in tokens]


def conflict(reply: object) -> bool:
    assert isinstance(reply, VmReply | HostReply)
    error = reply.error
    return (
        error is not None and error.code is ErrorCode.CONFLICT and error.detail == (CONFLICT_DETAIL)
    )


def test_a_request_id_reused_for_another_vm_is_a_conflict_and_creates_nothing() -> None:
    kit = with_host()
    kit.create("a", request_id="r-1")
    assert conflict(kit.create("b", request_id="r-1"))
    assert "b" not in kit.state.vms


def test_a_request_id_reused_for_another_operation_is_a_conflict_and_does_nothing() -> None:
    kit = with_host()
    kit.create("a", request_id="r-1")
    kit.heartbeat("h1", kit.running_on("h1"))
    assert conflict(kit.mutate(Op.STOP, VmRef(name="a", request_id="r-1")))
    assert kit.vm("a").state is VmState.RUNNING


def test_a_request_id_reused_with_another_body_is_a_conflict() -> None:
    kit = with_host()
    kit.create("a", "Small", request_id="r-1")
    assert conflict(kit.create("a", "Medium", request_id="r-1"))
    assert kit.vm("a").size == "Small"


def test_a_retry_of_the_same_request_still_gets_the_original_reply() -> None:
    kit = with_host()
    first = kit.create("a", request_id="r-1")
    kit.heartbeat("h1", kit.running_on("h1"))
    assert kit.create("a", request_id="r-1") == first


def test_two_copies_of_one_request_in_one_step_apply_once() -> None:
    kit = with_host()
    kit.create("a")
    kit.mutate(Op.STOP, VmRef(name="a"))
    kit.heartbeat("h1", [])  # stopped
    assert kit.vm("a").state is VmState.STOPPED
    first, second = answer(
        kit, Op.ATTACH_DISK, AttachDisk(vm="a", size_mib=128, request_id="r-1"), copies=2
    )
    assert first == second
    assert len(kit.vm("a").disks) == 2  # the OS disk and one data disk, not two


def test_host_operations_are_bound_too() -> None:
    kit = with_host()
    kit.step()
    (cordoned,) = answer(kit, Op.CORDON, HostRef(host_id="h1", request_id="r-1"))
    assert isinstance(cordoned, HostReply) and cordoned.error is None
    (uncordon,) = answer(kit, Op.UNCORDON, HostRef(host_id="h1", request_id="r-1"))
    assert conflict(uncordon)
    assert kit.host("h1").cordoned
    assert conflict(kit.create("a", request_id="r-1"))


def test_the_binding_survives_a_restart() -> None:
    kit = with_host()
    kit.create("a", request_id="r-1")
    kit.restart(reload=True)
    assert conflict(kit.create("b", request_id="r-1"))


def test_a_job_without_a_request_id_is_refused_with_its_own_code() -> None:
    data = codec.encode(CreateVm(name="a", size="Small"))
    job = decode_mutation(subjects.job_subject(subjects.VM_CREATE), data, 1, via_job=True)
    assert isinstance(job, InvalidJob) and job.code is ErrorCode.MISSING_REQUEST_ID
    assert "Nats-Msg-Id" in job.detail
    with_id = decode_mutation(
        subjects.job_subject(subjects.VM_CREATE), data, 1, via_job=True, msg_id="m-1"
    )
    assert isinstance(with_id, Mutation) and with_id.body.request_id == "m-1"


async def test_a_version_1_store_keeps_its_replies_as_bindings(tmp_path: Path) -> None:
    """Replies stored before bindings existed still answer their retries, and still refuse
    their id for another VM."""
    path = tmp_path / "scheduler.db"
    store = await SqliteStore.open(path)
    await store.close()
    kit = with_host()
    reply = kit.create("a", request_id="r-1")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        db.execute(
            "INSERT INTO replies (request_id, body, created_s) VALUES ('r-1', ?, 1e12)",
            (msgspec.json.encode(reply),),
        )
    store = await SqliteStore.open(path)
    try:
        loaded = await store.load()
    finally:
        await store.close()
    record = loaded.replies["r-1"]
    assert record.reply == reply and record.target == "a"
