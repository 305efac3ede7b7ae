"""The launch backlog's runs kept in the store: read back, oldest first, as memory frees.

Past `LaunchBacklog.memory` waiting runs, a run that must wait for its target is dropped from memory
(`backlog.py`): it is recorded `pending` already, so the store holds all of it. When the runs
waiting in memory are down to half, `ReadBack` reads the store's pending runs of this replica from
the oldest dropped one on (`Store.pending_runs`, a range of the runs' state index), skips those still
in memory (a fire waiting for its due time, a run waiting for a retry, one read back before) and
hands each of the others back to the backlog. A read that reaches the end of the store recounts:
what may still wait there is what was dropped since the read began.

Nothing is taken back twice or after its end: the committer is flushed before the read (a run that
ended before it is not pending there), and the runs that end while the read is under way are noted
(`LaunchBacklog.ended`) and skipped, as are the runs in memory (`RunStates.adopt`). A cancel of a
dropped run takes it back into memory first and ends it there (`RunStates.cancel`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog

from jobwire.engine.backlog import LaunchBacklog, Waiting
from jobwire.model import Run

log = structlog.get_logger(__name__)

Read = Callable[[tuple[datetime, str] | None, int], Awaitable[tuple[list[Run], tuple[datetime, str] | None]]]
"""`Store.pending_runs` for this replica: (from where, at most how many) → runs, where to go on."""

BACKOFF = (0.1, 5.0)
"""A failed read is tried again after 0.1 s, doubling up to 5 s."""


class ReadBack:
    """Reads the runs the backlog dropped back into memory, one read at a time."""

    def __init__(
        self,
        backlog: LaunchBacklog,
        read: Read,
        flush: Callable[[], Awaitable[None]],
        adopt: Callable[[Run], Waiting | None],
        start: Callable[[Waiting], None],
    ) -> None:
        self.backlog = backlog
        self._read = read
        self._flush = flush
        self._adopt = adopt
        """Takes a run back into memory: what it waits as, or None (it ended: its job is gone)."""
        self._start = start
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        """Set by `stop`, which the launcher's shutdown calls before anything else."""
        backlog.wake = self.wake

    def wake(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jobwire-backlog-read")

    async def _run(self) -> None:
        delay = BACKOFF[0]
        try:
            while not self._stopped and self.backlog.wants_back():
                try:
                    await self._once()
                except Exception as exc:  # the store away: the runs wait there, read again later
                    error = self.backlog.read_error = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "reading waiting runs back from the store failed; trying again",
                        error=error,
                        retry_in=delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF[1])
                else:
                    self.backlog.read_error, delay = None, BACKOFF[0]
        finally:
            self._task = None

    async def _once(self) -> None:
        backlog = self.backlog
        ended = backlog.ended = set()
        try:
            await self._flush()  # a run that ended before this is not pending in the store
            before, start = backlog.spilled(), backlog.cursor
            runs, after = await self._read(start, max(backlog.memory - backlog.held, 2))
            if self._stopped:
                return
            for run in runs:
                if run.id in ended:
                    continue
                item = self._adopt(run)
                if item is not None and backlog.admit_back(item[1].target.type, item):
                    self._start(item)
        finally:
            backlog.ended = None
        if after is None:
            backlog.exhausted(before)
        elif backlog.cursor == start:  # else a run older than `after` was dropped meanwhile
            backlog.cursor = after

    async def stop(self) -> None:
        """At shutdown, first: nothing is read back any more (what waits stays in the store)."""
        self._stopped = True
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


__all__ = ["ReadBack"]
