"""A QMP client connecting after another went away: QEMU first writes what it still owed the
old client (a reply to a command in flight, events), then the greeting. The new client takes
the greeting, not the leftovers (an agent restarted while a command was in flight once found
its VM "unreachable")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hostagent.drivers.qmp import QmpClient, QmpError

GREETING: dict[str, object] = {"QMP": {"version": {}, "capabilities": []}}


async def _serve(path: Path, first: list[dict[str, object]]) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for message in first:
                writer.write(json.dumps(message).encode() + b"\n")
            async for line in reader:  # answer every command with an empty return
                request = json.loads(line)
                answer = {"return": {}, "id": request.get("id")}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            writer.close()

    return await asyncio.start_unix_server(client, path=str(path))


async def test_leftovers_of_a_previous_client_come_before_the_greeting(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    stale: list[dict[str, object]] = [{"return": {}, "id": 70}, {"event": "STOP", "data": {}}]
    server = await _serve(path, [*stale, GREETING])
    try:
        client = await QmpClient.connect(path, timeout_s=2)
        await client.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_peer_that_is_not_qemu_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    server = await _serve(path, [{"hello": "not qmp"}])
    try:
        with pytest.raises(QmpError, match="unexpected QMP greeting"):
            await QmpClient.connect(path, timeout_s=2)
    finally:
        server.close()
        await server.wait_closed()
