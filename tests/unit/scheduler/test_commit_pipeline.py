"""The commit pipeline (scheduler/shell/pipeline.py): the stages of consecutive steps overlap,
and every promise of a commit still holds: appends, writes and actions in step order, a step
acting only after its own write, nothing stored or acted on after a failed append."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.shell.pipeline import CommitPipeline, Stage
from scheduler.shell.statelog import Fenced
from scheduler.shell.store import Rows
from tests.waiting import wait_until


def _rows(step: int) -> Rows:
    return Rows([(f"vm-{step}", "pending", b"{}")], [], [], [], [], [])


def _step(rows: Rows) -> int:
    return int(rows.vms[0][0].removeprefix("vm-"))


class Stages:
    """What each stage did, in order; a stage of a chosen step waits for its gate or fails."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.gates: dict[tuple[str, int], asyncio.Event] = {}
        self.failing: dict[tuple[str, int], BaseException] = {}
        self.seq = 0

    def gate(self, stage: str, step: int) -> asyncio.Event:
        return self.gates.setdefault((stage, step), asyncio.Event())

    async def _run(self, stage: str, step: int) -> None:
        self.log.append((f"{stage} start", step))
        if (stage, step) in self.gates:
            await self.gates[(stage, step)].wait()
        if (stage, step) in self.failing:
            raise self.failing[(stage, step)]
        self.log.append((stage, step))

    async def append(self, rows: Rows) -> Rows:
        await self._run("append", _step(rows))
        self.seq += 1
        return rows.with_seq(self.seq)

    def store(self, step: int) -> Stage:
        async def write(rows: Rows) -> None:
            assert rows.log_seq > 0, "stored before it was logged"
            await self._run("write", step)

        return write

    def act(self, step: int) -> Stage:
        async def act(rows: Rows) -> None:
            await self._run("act", step)

        return act

    def done(self, stage: str) -> list[int]:
        return [step for name, step in self.log if name == stage]

    def started(self, stage: str) -> list[int]:
        return [step for name, step in self.log if name == f"{stage} start"]


async def _enter(pipeline: CommitPipeline, stages: Stages, step: int) -> None:
    await pipeline.enter(_rows(step), stages.store(step), stages.act(step))


async def test_the_next_append_runs_while_a_slow_write_is_under_way_and_order_holds() -> None:
    stages = Stages()
    pipeline = CommitPipeline(stages.append)
    slow_write = stages.gate("write", 1)
    await _enter(pipeline, stages, 1)
    await _enter(pipeline, stages, 2)
    await wait_until(lambda: stages.done("append") == [1, 2], message="step 2 appended")
    assert stages.started("write") == [1], "step 2 written before step 1"
    assert stages.done("act") == []
    third = asyncio.create_task(_enter(pipeline, stages, 3))
    await wait_until(lambda: stages.done("append") == [1, 2])
    assert not third.done(), "a third step entered while the first had not acted (unbounded)"
    slow_write.set()
    await third
    await pipeline.finish()
    assert stages.done("append") == [1, 2, 3]
    assert stages.done("write") == [1, 2, 3]
    assert stages.done("act") == [1, 2, 3]
    for step in (1, 2, 3):
        assert stages.log.index(("write", step)) < stages.log.index(("act start", step))
    # Bounded: step 3 entered only once step 1 had acted (two steps in the pipeline at most).
    assert stages.log.index(("act", 1)) < stages.log.index(("append start", 3))


async def test_a_slow_append_holds_the_next_step_and_nothing_is_written_before_it() -> None:
    stages = Stages()
    pipeline = CommitPipeline(stages.append)
    slow_append = stages.gate("append", 1)
    await _enter(pipeline, stages, 1)
    second = asyncio.create_task(_enter(pipeline, stages, 2))
    await wait_until(lambda: stages.started("append") == [1])
    assert not second.done(), "step 2 entered before step 1 was appended"
    assert stages.started("write") == []
    slow_append.set()
    await second
    await pipeline.finish()
    assert stages.done("append") == [1, 2]
    assert stages.done("act") == [1, 2]
    assert stages.log.index(("append", 1)) < stages.log.index(("append start", 2))


async def test_a_failed_append_acts_on_nothing_of_its_step_or_later_ones() -> None:
    stages = Stages()
    pipeline = CommitPipeline(stages.append)
    slow_write = stages.gate("write", 1)
    fenced = Fenced("state log moved past seq 1: another leader")
    stages.failing[("append", 2)] = fenced
    await _enter(pipeline, stages, 1)
    await _enter(pipeline, stages, 2)
    with pytest.raises(Fenced):
        await _enter(pipeline, stages, 3)
    slow_write.set()
    with pytest.raises(Fenced):
        await pipeline.finish()
    assert stages.done("append") == [1]
    assert stages.started("append") == [1, 2], "an append after a failed one"
    assert stages.done("write") == [1]
    assert stages.done("act") == [1], "the step logged before the failure still acts"


async def test_a_failed_write_stores_and_acts_on_nothing_after_it() -> None:
    stages = Stages()
    pipeline = CommitPipeline(stages.append)
    slow_write = stages.gate("write", 1)
    stages.failing[("write", 1)] = OSError("disk full")
    await _enter(pipeline, stages, 1)
    await _enter(pipeline, stages, 2)
    slow_write.set()
    with pytest.raises(OSError, match="disk full"):
        await _enter(pipeline, stages, 3)
    with pytest.raises(OSError, match="disk full"):
        await pipeline.finish()
    assert stages.started("write") == [1]
    assert stages.done("act") == []


def _raises(pipeline: CommitPipeline) -> bool:
    try:
        pipeline.check()
    except Fenced:
        return True
    return False


async def test_check_raises_a_failed_append_without_waiting_and_nothing_before_it_fails() -> None:
    """A step with nothing to commit does not enter the pipeline: the core loop still ends on
    an earlier step's failed append (a lost term) through ``check``, which never waits."""
    stages = Stages()
    pipeline = CommitPipeline(stages.append)
    slow_append = stages.gate("append", 1)
    stages.failing[("append", 1)] = Fenced("state log moved past seq 0: another leader")
    await _enter(pipeline, stages, 1)
    await wait_until(lambda: stages.started("append") == [1])
    assert not _raises(pipeline), "raised before the append failed"
    slow_append.set()
    await wait_until(lambda: _raises(pipeline), message="the failed append raised")
    with pytest.raises(Fenced):
        await pipeline.finish()
    assert stages.done("write") == [] and stages.done("act") == []
