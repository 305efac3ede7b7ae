"""The launch backlog: runs that are recorded and due but wait for their target's capacity.

When runs arrive faster than a target can take them, each extra run used to become an asyncio task
waiting inside the target (an HTTP request waiting for one of the pool's slots): thousands of tasks,
each woken and re-queued by the loop, with the API's requests and the scheduler's fires queued
behind them. Now at most `limit` attempts of one target kind run at once; the others wait here in
order — a tuple of the run and its job, no task, no coroutine — already durably recorded `pending`
in the store (a restart launches them from there, like any pending run without a launch marker).

The backlog is visible: `/readyz` shows it under `store.launch_backlog` (how many wait, since when,
the most that waited), `jobwire_launch_backlog` by target kind, and one log line when a backlog
starts and one when it has drained.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
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


class LaunchBacklog:
    """Per target kind: attempts running, and the runs waiting for one of its `limit` places."""

    def __init__(self, metrics: Metrics, targets: Mapping[str, Target], cap: int | None) -> None:
        self._gauge = Children(metrics.launch_backlog)
        self._targets = targets
        self._cap = cap
        self._queues: dict[str, _Queue] = {}

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
        if not q.waiting:
            q.since, q.peak, q.passed, q.logged = time.time(), 0, 0, False
        elif not q.logged and q.since is not None and time.time() - q.since >= LOG_AFTER:
            q.logged = True
            log.warning(
                "launch backlog started: runs wait for their target",
                target=kind,
                limit=q.limit,
                waiting=len(q.waiting),
                seconds=round(time.time() - q.since, 3),
            )
        q.waiting.append(item)
        q.passed += 1
        q.peak = max(q.peak, len(q.waiting))
        self._gauge(kind).set(len(q.waiting))
        return False

    def done(self, kind: str) -> Waiting | None:
        """An attempt of `kind` ended: its place goes to the next waiting run (returned, counted as
        running), or is freed."""
        q = self._queues.get(kind)
        if q is None:
            return None
        if not q.waiting:
            q.running = max(0, q.running - 1)
            return None
        nxt = q.waiting.popleft()
        self._gauge(kind).set(len(q.waiting))
        if not q.waiting and q.since is not None:
            if q.logged:
                log.info(
                    "launch backlog drained",
                    target=kind,
                    runs=q.passed,
                    most_waiting=q.peak,
                    seconds=round(time.time() - q.since, 3),
                )
            q.since = None
        return nxt

    def drop(self) -> None:
        """At shutdown: forget the runs still waiting (they stay pending in the store)."""
        for kind, q in self._queues.items():
            if q.waiting:
                log.info("runs waiting for a target stay pending for the next start", count=len(q.waiting))
            q.waiting.clear()
            q.since = None
            self._gauge(kind).set(0)

    @property
    def waiting(self) -> int:
        return sum(len(q.waiting) for q in self._queues.values())

    def summary(self) -> dict[str, Any]:
        """For `/readyz`: by target kind with a limit, running, waiting, since when, the most waiting."""
        return {
            kind: {
                "limit": q.limit,
                "running": q.running,
                "waiting": len(q.waiting),
                "waiting_since": q.since,
                "most_waiting": q.peak if q.since is not None else 0,
            }
            for kind, q in self._queues.items()
        }
