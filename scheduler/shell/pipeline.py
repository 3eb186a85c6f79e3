"""The commit pipeline: a step's batch goes to the state log, then to SQLite (and the read view),
then its actions go out, and the stages of consecutive steps overlap.

While step N is appended to the state log, step N-1 is written to SQLite and acted on (and the
core computes step N+1). The promises of a commit hold all the same:
- appends in step order, each after the previous one has landed (it names the sequence it
  expects to follow), and none after a failed one;
- writes in step order, a step written only after its own append;
- a step acts only after its own write, and the steps act in order;
- a step whose append or write failed, or whose predecessor's did, stores and acts on nothing.
Bounded: a step enters once the previous step's append is done and the step before that has
acted, so at most two steps are in the pipeline (``enter`` waits meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from scheduler.shell.store import Rows

Append = Callable[[Rows], Awaitable[Rows]]
"""Append a batch to the state log; return it as logged (with its log sequence)."""
Stage = Callable[[Rows], Awaitable[None]]
"""A later stage of one step, given its rows as logged."""

_Stage = asyncio.Future[Rows]


@dataclass(frozen=True, slots=True)
class _Commit:
    """One step in the pipeline: each stage a task whose result is the step's logged rows."""

    appended: _Stage
    stored: _Stage
    acted: _Stage


class CommitPipeline:
    def __init__(self, append: Append) -> None:
        self._append = append
        self._commits: list[_Commit] = []

    async def enter(self, rows: Rows, store: Stage, act: Stage) -> None:
        """Start a step's commit once there is room; raise what an earlier step's commit
        raised (the core loop then ends: a failed append is a lost term)."""
        commits = self._commits
        if commits:
            await asyncio.shield(commits[-1].appended)
        if len(commits) == 2:
            await asyncio.shield(commits.pop(0).acted)
        before = commits[-1] if commits else _finished()
        appended = _task(_after(before.appended, _first(self._append, rows)))
        stored = _task(_after(before.stored, _then(appended, store)))
        acted = _task(_after(before.acted, _then(stored, act)))
        commits.append(_Commit(appended, stored, acted))

    def check(self) -> None:
        """Raise what a step's commit in the pipeline raised already, without waiting: a step
        that does not enter (it has nothing to commit) still ends the loop on a failure."""
        for commit in self._commits:
            for stage in (commit.appended, commit.stored, commit.acted):
                if stage.done() and not stage.cancelled() and stage.exception() is not None:
                    stage.result()

    async def finish(self) -> None:
        """Wait for the steps in the pipeline to be committed and acted on; raise the first
        failure among them, in step order."""
        stages = [stage for c in self._commits for stage in (c.appended, c.stored, c.acted)]
        self._commits = []
        outcomes = await asyncio.gather(
            *(asyncio.shield(s) for s in stages), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


async def _after(previous: _Stage, stage: Coroutine[Any, Any, Rows]) -> Rows:
    """``stage`` once the previous step's same stage is done; not at all if that failed."""
    try:
        await previous
    except BaseException:
        stage.close()
        raise
    return await stage


async def _first(append: Append, rows: Rows) -> Rows:
    return await append(rows)


async def _then(earlier: _Stage, stage: Stage) -> Rows:
    """``stage`` once this step's earlier stage is done, with its rows as logged."""
    rows = await earlier
    await stage(rows)
    return rows


def _finished() -> _Commit:
    """The commit before the first: every stage done."""
    done: _Stage = asyncio.get_running_loop().create_future()
    done.set_result(Rows([], [], [], [], [], []))
    return _Commit(done, done, done)


def _task(coro: Coroutine[Any, Any, Rows]) -> _Stage:
    """A stage's task. Its failure is seen by the next step's same stage or by the core
    loop, or by nobody (a step that failed through its own earlier stage first): marked as
    seen either way, so that nothing logs it as never retrieved."""
    task = asyncio.get_running_loop().create_task(coro)
    task.add_done_callback(_seen)
    return task


def _seen(task: asyncio.Task[Rows]) -> None:
    if not task.cancelled():
        task.exception()
