"""The launch backlog: runs that are recorded and due but wait for their target's capacity.

When runs arrive faster than a target can take them, each extra run used to become an asyncio task
waiting inside the target (an HTTP request waiting for one of the pool's slots): thousands of tasks,
each woken and re-queued by the loop, with the API's requests and the scheduler's fires queued
behind them. Now at most `limit` attempts of one target kind run at once; the others wait here in
order — a tuple of the run and its job, no task, no coroutine — already durably recorded `pending`
in the store (a restart launches them from there, like any pending run without a launch marker).

Memory is bounded: at most `memory` runs (all kinds together, `JOBWIRE_BACKLOG_MEMORY`) wait
here; past that a run waiting is dropped from memory and stays in the store only, and it is taken
back, oldest first, when the backlog in memory is down to half (`spill.py`).

The backlog is visible: `/readyz` shows it under `launch_backlog` (how many wait, in memory and in
the store, since when, the most that waited), `jobwire_launch_backlog` by target kind, and one log
line when a backlog starts and one when it has drained.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from jobwire.engine.metrics import Children, Metrics
from jobwire.model import Job, Run
from jobwire.targets.base import Target

log = structlog.get_logger(__name__)

LOG_AFTER = 1.0
"""Seconds a backlog must last before its start (and then its end) is logged: a burst of fires due
together that waits a few hundred milliseconds is normal work, not an overload."""


Waiting = tuple[Run, Job, bool, datetime | None]
"""A run waiting for its target: the run, its job, whether it is resumed, when its event came."""


@dataclass(slots=True)
class _Queue:
    limit: int
    running: int = 0
    waiting: deque[Waiting] = field(default_factory=deque)
    since: float | None = None
    """Wall-clock time the current backlog started; None when nothing waits."""
    peak: int = 0
    passed: int = 0
    """Runs that waited in the current backlog."""
    logged: bool = False
    """Whether the current backlog's start was logged (it lasted `LOG_AFTER`)."""
    stored: int = 0
    """Runs of this kind that may wait in the store only (dropped from memory): never fewer than
    truly do — a recount (`LaunchBacklog.exhausted`) may find fewer."""
    spilled: int = 0
    """Runs of this kind ever dropped from memory (to recount those dropped while the store is read)."""


class LaunchBacklog:
    """Per target kind: attempts running, and the runs waiting for one of its `limit` places."""

    def __init__(
        self, metrics: Metrics, targets: Mapping[str, Target], cap: int | None, memory: int = 10_000
    ) -> None:
        self._gauge = Children(metrics.launch_backlog)
        self._targets = targets
        self._cap = cap
        self._queues: dict[str, _Queue] = {}
        self.memory = memory
        """The most runs waiting in memory, all kinds together; past it they wait in the store."""
        self.held = 0
        """Runs waiting in memory, all kinds together."""
        self.stored = 0
        """Runs that may wait in the store only, all kinds together (the queues' `stored`)."""
        self.cursor: tuple[datetime, str] | None = None
        """Where the store is read from for them: no dropped run is older (created_at, id)."""
        self.ended: set[str] | None = None
        """While the store is read for dropped runs (`spill.py`): the runs that left memory meanwhile
        by ending. The read may have seen them pending; they are not taken back."""
        self.drop_run: Callable[[Run], None] = lambda run: None
        """Forgets a run in memory (`runs.RunStates.forget`): it waits in the store only."""
        self.read_error: str | None = None
        """Why the last read of the store for them failed, while it is retried (`spill.py`)."""
        self.wake: Callable[[], None] = lambda: None
        """Called when dropped runs should be read back (`spill.ReadBack.wake`)."""

    def _limit_of(self, kind: str) -> int | None:
        """The target's own `launch_limit`, lowered by `settings.max_running_attempts`."""
        target = self._targets.get(kind)
        own = target.launch_limit if target is not None else None
        cap = self._cap
        return own if cap is None else cap if own is None else min(own, cap)

    def _queue(self, kind: str) -> _Queue | None:
        q = self._queues.get(kind)
        if q is None:
            limit = self._limit_of(kind)
            if limit is None:
                return None
            q = self._queues[kind] = _Queue(limit)
        return q

    def admit(self, kind: str, item: Waiting) -> bool:
        """True if an attempt of `kind` may start now (it is counted as running until `done`);
        False if the run was put in the backlog instead."""
        q = self._queue(kind)
        if q is None:
            return True
        if q.running < q.limit and not q.waiting:
            q.running += 1
            return True
        if not q.waiting and not q.stored:
            q.since, q.peak, q.passed, q.logged = time.time(), 0, 0, False
        elif not q.logged and q.since is not None and time.time() - q.since >= LOG_AFTER:
            q.logged = True
            log.warning(
                "launch backlog started: runs wait for their target",
                target=kind,
                limit=q.limit,
                waiting=len(q.waiting) + q.stored,
                in_store=q.stored,
                seconds=round(time.time() - q.since, 3),
            )
        run = item[0]
        if (self.stored or self.held >= self.memory) and not item[2] and run.attempt == 1:
            # memory is full, or older runs wait in the store: this one waits there too (it is
            # recorded pending); a resumed run or a retry stays (their state is not only the row)
            q.stored += 1
            q.spilled += 1
            self.stored += 1
            key = (run.created_at, run.id)
            if self.cursor is None or key < self.cursor:
                self.cursor = key
            self.drop_run(run)
        else:
            q.waiting.append(item)
            self.held += 1
        q.passed += 1
        q.peak = max(q.peak, len(q.waiting) + q.stored)
        self._gauge(kind).set(len(q.waiting) + q.stored)
        return False

    def admit_back(self, kind: str, item: Waiting) -> bool:
        """A run read back from the store (`spill.py`): True if it may start now (counted as
        running), else it waits in memory, behind those there."""
        q = self._queue(kind)
        if q is None:
            return True
        self._unstore(q)
        if q.running < q.limit and not q.waiting:
            q.running += 1
            self._gauge(kind).set(q.stored)
            return True
        q.waiting.append(item)
        self.held += 1
        self._gauge(kind).set(len(q.waiting) + q.stored)
        return False

    def gone(self, kind: str) -> None:
        """A run waiting in the store ended there (cancelled): one fewer to read back."""
        q = self._queues.get(kind)
        if q is not None and self._unstore(q):
            self._gauge(kind).set(len(q.waiting) + q.stored)

    def _unstore(self, q: _Queue) -> bool:
        """One fewer run of `q`'s kind waits in the store (if any was counted there)."""
        if q.stored <= 0:
            return False
        q.stored -= 1
        self.stored -= 1
        if not self.stored:  # none left there: the next read starts at the next run dropped
            self.cursor = None
        return True

    def spilled(self) -> dict[str, int]:
        """Per kind, the runs ever dropped from memory: taken before the store is read."""
        return {kind: q.spilled for kind, q in self._queues.items()}

    def exhausted(self, before: Mapping[str, int]) -> None:
        """The store was read to its end for dropped runs, from a read that began when `before`
        (`spilled()`) held: those that may still wait there were dropped since."""
        self.stored = 0
        for kind, q in self._queues.items():
            q.stored = q.spilled - before.get(kind, 0)
            self.stored += q.stored
            self._gauge(kind).set(len(q.waiting) + q.stored)
        if not self.stored:
            self.cursor = None

    def wants_back(self) -> bool:
        """Whether runs wait in the store and memory has room for them (down to half)."""
        return self.stored > 0 and self.held <= self.memory // 2

    def done(self, kind: str) -> Waiting | None:
        """An attempt of `kind` ended: its place goes to the next waiting run (returned, counted as
        running), or is freed."""
        q = self._queues.get(kind)
        if q is None:
            return None
        if not q.waiting:
            q.running = max(0, q.running - 1)
            if q.stored:
                self.wake()  # this kind's runs all wait in the store
            elif q.since is not None:  # (no call once a run: this is every attempt's end)
                self._drained(kind, q)
            return None
        nxt = q.waiting.popleft()
        self.held -= 1
        self._gauge(kind).set(len(q.waiting) + q.stored)
        if self.stored and self.held <= self.memory // 2:
            self.wake()
        if not q.waiting and not q.stored:
            self._drained(kind, q)
        return nxt

    @staticmethod
    def _drained(kind: str, q: _Queue) -> None:
        if q.since is None:
            return
        if q.logged:
            log.info(
                "launch backlog drained",
                target=kind,
                runs=q.passed,
                most_waiting=q.peak,
                seconds=round(time.time() - q.since, 3),
            )
        q.since = None

    def drop(self) -> None:
        """At shutdown: forget the runs still waiting (they stay pending in the store)."""
        for kind, q in self._queues.items():
            if q.waiting or q.stored:
                log.info(
                    "runs waiting for a target stay pending for the next start",
                    count=len(q.waiting) + q.stored,
                    target=kind,
                )
            q.waiting.clear()
            q.stored = 0
            q.since = None
            self._gauge(kind).set(0)
        self.held = self.stored = 0
        self.cursor = None

    @property
    def waiting(self) -> int:
        return self.held + self.stored

    def summary(self) -> dict[str, Any]:
        """For `/readyz`: by target kind with a limit, running, waiting, since when, the most waiting."""
        return {
            kind: {
                "limit": q.limit,
                "running": q.running,
                "waiting": len(q.waiting) + q.stored,
                "in_memory": len(q.waiting),
                "in_store": q.stored,
                "read_error": self.read_error if q.stored else None,
                "waiting_since": q.since,
                "most_waiting": q.peak if q.since is not None else 0,
            }
            for kind, q in self._queues.items()
        }
