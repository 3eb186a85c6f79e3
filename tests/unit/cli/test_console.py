"""How ``vm console`` and ``vm logs`` join console pieces, cut lines and find the VM's host."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cli.console import Splice, last_lines
from common import messages as m
from common.console import console_host
from common.console_messages import ConsoleOutput
from common.errors import ApiError


def piece(offset: int, data: bytes, generation: int = 1) -> ConsoleOutput:
    return ConsoleOutput(vm="web", generation=generation, offset=offset, data=data)


def test_live_output_continues_the_tail_without_repeats_or_gaps() -> None:
    splice = Splice()
    assert splice.accept(piece(0, b"boot\r\n# ")) == b"boot\r\n# "
    assert splice.accept(piece(4, b"\r\n# ")) == b""  # published before the tail was taken
    assert splice.accept(piece(6, b"# ls")) == b"ls"  # overlaps the tail's end
    assert splice.accept(piece(10, b"\r\n")) == b"\r\n"
    assert splice.accept(piece(0, b"again\r\n", generation=2)) == b"again\r\n"  # restarted


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, b""), (1, b"c"), (2, b"b\r\nc"), (9, b"a\nb\r\nc")],
    ids=["none", "unterminated-last", "two", "more-than-there-are"],
)
def test_last_lines(count: int, expected: bytes) -> None:
    assert last_lines(b"a\nb\r\nc", count) == expected


def vm(state: m.VmState, host: str | None) -> m.VmInfo:
    now = datetime.now(UTC)
    return m.VmInfo(
        name="web", size="Small", cpu_milli=1000, mem_mib=512, image="tiny", region=None,
        availability_set=None, state=state, host=host, generation=1, reason="",
        created_at=now, updated_at=now,
    )  # fmt: skip


def test_the_console_is_served_by_the_vms_host_while_it_runs_there() -> None:
    assert console_host(vm(m.VmState.RUNNING, "h1")) == "h1"
    for state, host in [(m.VmState.STOPPED, None), (m.VmState.PENDING, None)]:
        with pytest.raises(ApiError) as caught:
            console_host(vm(state, host))
        assert caught.value.code is m.ErrorCode.INVALID_STATE
        assert "not running on any host" in caught.value.detail
