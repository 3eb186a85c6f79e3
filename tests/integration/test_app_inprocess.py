"""The scheduler app run inside the test's event loop: the entry points an in-process front end
(such as an HTTP API) uses, answered only after commit, as over NATS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.config import SchedulerConfig
from common.fields import ErrorCode
from common.messages import CreateVm, VmRef, VmState
from common.natsserver import NatsServer
from scheduler.core.contract import Op
from scheduler.shell.app import SchedulerApp
from scheduler.shell.store import SqliteStore

pytestmark = pytest.mark.integration


async def test_submit_answers_after_commit_and_read_sees_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    config = SchedulerConfig(nats_url=nats_server.url, db_path=str(tmp_path / "s.db"))
    app = SchedulerApp(config)
    task = asyncio.create_task(app.run())
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        reply = await app.submit(Op.CREATE, CreateVm(name="inproc", size="Small"))
        assert reply.vm is not None and reply.vm.state is VmState.PENDING
        bad = await app.submit(Op.STOP, VmRef(name="nope"))
        assert bad.error is not None and bad.error.code is ErrorCode.NOT_FOUND
        listed = app.read("stratus.api.vm.get", b'{"name": "inproc"}')
        assert b'"state":"pending"' in listed
        # Committed before the reply: a second connection to the store sees the record.
        store = await SqliteStore.open(config.db_path)
        try:
            loaded = await store.load()
        finally:
            await store.close()
        assert [vm.name for vm in loaded.vms] == ["inproc"]
    finally:
        app.stop()
        await asyncio.wait_for(task, timeout=10)
